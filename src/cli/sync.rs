//! What the sync commands share: record kinds on the command line and
//! paging the change feed. `push` writes records in batches and `export`
//! prints them (cli/push.rs); `mirror` keeps a local copy (cli/mirror.rs).

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb;

pub(super) type SyncClient = pb::sync_service_client::SyncServiceClient<Channel>;

/// Changes per ListChanges page (the hub's maximum); halved while a page is
/// larger than `MAX_MESSAGE`.
pub(super) const FEED_PAGE: i32 = 5000;
/// The largest response accepted: pages and watch messages carry whole
/// records, so they outgrow gRPC's default of 4 MiB.
pub(super) const MAX_MESSAGE: usize = 64 << 20;

/// A record kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum RecordKindArg {
    Workshop,
    Practice,
    Tool,
}

impl RecordKindArg {
    pub fn to_proto(self) -> pb::RecordKind {
        match self {
            RecordKindArg::Workshop => pb::RecordKind::Workshop,
            RecordKindArg::Practice => pb::RecordKind::Practice,
            RecordKindArg::Tool => pb::RecordKind::Tool,
        }
    }

    pub(super) fn singular(self) -> &'static str {
        match self {
            RecordKindArg::Workshop => "workshop",
            RecordKindArg::Practice => "practice",
            RecordKindArg::Tool => "tool",
        }
    }
}

/// Sorted, without repeats.
pub(super) fn unique_kinds(kinds: &[RecordKindArg]) -> Vec<RecordKindArg> {
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    kinds
}

pub(super) fn kinds_to_proto(kinds: &[RecordKindArg]) -> Vec<i32> {
    unique_kinds(kinds)
        .into_iter()
        .map(|k| k.to_proto() as i32)
        .collect()
}

pub(super) fn sync_client(channel: Channel) -> SyncClient {
    SyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

/// Whether a call failed because its response was larger than we accept.
pub(super) fn too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

/// One page of ListChanges, with fewer changes per page while a page does
/// not fit in `MAX_MESSAGE`; `page_size` keeps what worked.
pub(super) async fn list_changes(
    client: &mut SyncClient,
    cursor: &str,
    kinds: &[i32],
    page_size: &mut i32,
) -> Result<pb::ListChangesResponse, Status> {
    loop {
        let request = pb::ListChangesRequest {
            cursor: cursor.to_owned(),
            kinds: kinds.to_vec(),
            page_size: *page_size,
        };
        match client.list_changes(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if too_large(&status) && *page_size > 1 => {
                *page_size = (*page_size / 2).max(1);
                tracing::debug!(page_size = *page_size, "page too large; asking for fewer");
            }
            Err(status) => return Err(status),
        }
    }
}
