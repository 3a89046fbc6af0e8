//! The feed's wire encoding, written directly: a change carries the stored
//! record bytes as they are, rather than decoding each record into its
//! generated type only for tonic to encode it again.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::domain::Kind;
use crate::domain::record::timestamp_from_micros;
use crate::pb;

/// A message whose encoding is already made, sent as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded(pub Vec<u8>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never received.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Field numbers of `Change` and of the `Record` oneof (checked by a test
/// against the descriptors).
const CHANGE_CURSOR: u32 = 1;
const CHANGE_TYPE: u32 = 2;
const CHANGE_KIND: u32 = 3;
const CHANGE_NAME: u32 = 4;
const CHANGE_COMMIT_TIME: u32 = 5;
const CHANGE_RECORD: u32 = 6;
/// `changes` in both ListChangesResponse and WatchChangesResponse.
pub const RESPONSE_CHANGES: u32 = 1;

fn record_field(kind: Kind) -> u32 {
    match kind {
        Kind::Workshop => 1,
        Kind::Practice => 2,
        Kind::Tool => 3,
    }
}

fn bytes_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, out);
    encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Appends a string field (as prost would: omitted when empty).
pub fn put_str(tag: u32, text: &str, out: &mut Vec<u8>) {
    if !text.is_empty() {
        put_bytes(tag, text.as_bytes(), out);
    }
}

/// Appends one `Change` as an element of a response's `changes` field.
pub fn push_change(
    out: &mut Vec<u8>,
    cursor: &str,
    change_type: pb::ChangeType,
    kind: Kind,
    name: &str,
    commit_time: i64,
    body: Option<&[u8]>,
) {
    let timestamp = timestamp_from_micros(commit_time);
    let record_len = body.map(|b| bytes_len(record_field(kind), b.len()));
    let change_len = bytes_len(CHANGE_CURSOR, cursor.len())
        + encoding::int32::encoded_len(CHANGE_TYPE, &(change_type as i32))
        + encoding::int32::encoded_len(CHANGE_KIND, &(kind.to_proto() as i32))
        + bytes_len(CHANGE_NAME, name.len())
        + encoding::message::encoded_len(CHANGE_COMMIT_TIME, &timestamp)
        + record_len.map_or(0, |inner| bytes_len(CHANGE_RECORD, inner));
    encoding::encode_key(RESPONSE_CHANGES, WireType::LengthDelimited, out);
    encoding::encode_varint(change_len as u64, out);
    put_bytes(CHANGE_CURSOR, cursor.as_bytes(), out);
    encoding::int32::encode(CHANGE_TYPE, &(change_type as i32), out);
    encoding::int32::encode(CHANGE_KIND, &(kind.to_proto() as i32), out);
    put_bytes(CHANGE_NAME, name.as_bytes(), out);
    encoding::message::encode(CHANGE_COMMIT_TIME, &timestamp, out);
    if let (Some(inner), Some(body)) = (record_len, body) {
        encoding::encode_key(CHANGE_RECORD, WireType::LengthDelimited, out);
        encoding::encode_varint(inner as u64, out);
        put_bytes(record_field(kind), body, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::schema;
    use prost::Message;

    #[test]
    fn field_numbers_match_the_descriptors() {
        let change = schema()
            .pool()
            .get_message_by_name("copex.v1.Change")
            .unwrap();
        for (name, number) in [
            ("cursor", CHANGE_CURSOR),
            ("type", CHANGE_TYPE),
            ("kind", CHANGE_KIND),
            ("name", CHANGE_NAME),
            ("commit_time", CHANGE_COMMIT_TIME),
            ("record", CHANGE_RECORD),
        ] {
            assert_eq!(
                change.get_field_by_name(name).map(|f| f.number()),
                Some(number)
            );
        }
        let record = schema()
            .pool()
            .get_message_by_name("copex.v1.Record")
            .unwrap();
        for kind in Kind::ALL {
            assert_eq!(
                record
                    .get_field_by_name(kind.singular())
                    .map(|f| f.number()),
                Some(record_field(kind))
            );
        }
        for response in [
            "copex.v1.ListChangesResponse",
            "copex.v1.WatchChangesResponse",
        ] {
            let desc = schema().pool().get_message_by_name(response).unwrap();
            assert_eq!(
                desc.get_field_by_name("changes").map(|f| f.number()),
                Some(RESPONSE_CHANGES)
            );
        }
    }

    #[test]
    fn written_changes_decode_as_the_generated_types() {
        let tool = pb::Tool {
            name: "partners/a/tools/t".into(),
            display_name: "T".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        push_change(
            &mut out,
            "c-1",
            pb::ChangeType::Upserted,
            Kind::Tool,
            &tool.name,
            1_700_000_000_000_001,
            Some(&tool.encode_to_vec()),
        );
        push_change(
            &mut out,
            "c-2",
            pb::ChangeType::Deleted,
            Kind::Workshop,
            "partners/a/workshops/w",
            5,
            None,
        );
        put_str(2, "c-2", &mut out);
        let decoded = pb::ListChangesResponse::decode(out.as_slice()).unwrap();
        assert_eq!(decoded.next_cursor, "c-2");
        assert_eq!(
            decoded.changes,
            vec![
                pb::Change {
                    cursor: "c-1".into(),
                    r#type: pb::ChangeType::Upserted as i32,
                    kind: pb::RecordKind::Tool as i32,
                    name: tool.name.clone(),
                    commit_time: Some(timestamp_from_micros(1_700_000_000_000_001)),
                    record: Some(pb::Record {
                        kind: Some(pb::record::Kind::Tool(tool))
                    }),
                },
                pb::Change {
                    cursor: "c-2".into(),
                    r#type: pb::ChangeType::Deleted as i32,
                    kind: pb::RecordKind::Workshop as i32,
                    name: "partners/a/workshops/w".into(),
                    commit_time: Some(timestamp_from_micros(5)),
                    record: None,
                },
            ]
        );
    }
}
