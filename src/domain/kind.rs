//! The record kinds. Everything generic about records is driven by this enum
//! and the message descriptors; a fourth kind adds a variant here, its proto,
//! one `KindMessage` impl and one service line in `api`.

use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Workshop,
    Practice,
    Tool,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Workshop, Kind::Practice, Kind::Tool];

    /// Singular, lower case: the `kind` column and the request field prefix
    /// (`tool`, `tool_id`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Workshop => "workshop",
            Kind::Practice => "practice",
            Kind::Tool => "tool",
        }
    }

    /// The collection segment of resource names.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Workshop => "workshops",
            Kind::Practice => "practices",
            Kind::Tool => "tools",
        }
    }

    pub fn message_name(self) -> &'static str {
        match self {
            Kind::Workshop => "copex.v1.Workshop",
            Kind::Practice => "copex.v1.Practice",
            Kind::Tool => "copex.v1.Tool",
        }
    }

    /// The field that titles a record: required, at most 300 characters,
    /// sortable with `order_by`.
    pub fn title_field(self) -> &'static str {
        match self {
            Kind::Workshop | Kind::Practice => "title",
            Kind::Tool => "display_name",
        }
    }

    /// Long free-text fields: searched as text, not filtered by value.
    pub fn free_text_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Workshop => &["description", "theme_question", "objectives"],
            Kind::Practice => &["summary", "body", "outcomes"],
            Kind::Tool => &["summary", "description", "expansion_notes"],
        }
    }

    /// Field paths searched by SearchService, by index column from most to
    /// least telling: title, summary, terms (capabilities, topics, themes),
    /// people and organisations, long text.
    pub fn search_fields(self) -> [&'static [&'static str]; 5] {
        match self {
            Kind::Workshop => [
                &["title"],
                &["theme_question"],
                &["themes", "forum"],
                &[
                    "organisers.display_name",
                    "organisers.affiliation",
                    "panellists.display_name",
                    "panellists.affiliation",
                    "remote_moderators.display_name",
                    "remote_moderators.affiliation",
                ],
                &["description", "objectives"],
            ],
            Kind::Practice => [
                &["title"],
                &["summary"],
                &["topics", "target_groups"],
                &[],
                &["body", "outcomes", "evidence.title"],
            ],
            Kind::Tool => [
                &["display_name"],
                &["summary"],
                &["capabilities"],
                &["developer"],
                &["description", "expansion_notes"],
            ],
        }
    }

    pub fn from_collection(collection: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.collection() == collection)
    }

    pub fn from_singular(singular: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.singular() == singular)
    }

    pub fn to_proto(self) -> pb::RecordKind {
        match self {
            Kind::Workshop => pb::RecordKind::Workshop,
            Kind::Practice => pb::RecordKind::Practice,
            Kind::Tool => pb::RecordKind::Tool,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.singular())
    }
}

/// Binds a generated message type to its kind.
pub trait KindMessage: prost::Message + Default + Send + Sync + 'static {
    const KIND: Kind;
}

impl KindMessage for pb::Workshop {
    const KIND: Kind = Kind::Workshop;
}

impl KindMessage for pb::Practice {
    const KIND: Kind = Kind::Practice;
}

impl KindMessage for pb::Tool {
    const KIND: Kind = Kind::Tool;
}

/// Kinds a request names (`repeated RecordKind`), without repeats;
/// INVALID_ARGUMENT at `field[i]` for a number that is not a kind.
pub fn kinds_from_proto(field: &str, kinds: &[i32]) -> super::Result<Vec<Kind>> {
    let mut out = Vec::new();
    for (i, number) in kinds.iter().enumerate() {
        let kind = match pb::RecordKind::try_from(*number) {
            Ok(pb::RecordKind::Workshop) => Kind::Workshop,
            Ok(pb::RecordKind::Practice) => Kind::Practice,
            Ok(pb::RecordKind::Tool) => Kind::Tool,
            _ => {
                return Err(super::Error::invalid(
                    format!("{field}[{i}]"),
                    format!(
                        "{number} is not a record kind: use RECORD_KIND_WORKSHOP, RECORD_KIND_PRACTICE or RECORD_KIND_TOOL"
                    ),
                ));
            }
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

/// What every kind has, read through the `Record` oneof.
impl pb::Record {
    /// The kind set in the oneof; `None` when none is.
    pub fn record_kind(&self) -> Option<Kind> {
        use pb::record::Kind as K;
        match self.kind {
            Some(K::Workshop(_)) => Some(Kind::Workshop),
            Some(K::Practice(_)) => Some(Kind::Practice),
            Some(K::Tool(_)) => Some(Kind::Tool),
            None => None,
        }
    }

    /// The record's name; empty when no kind is set.
    pub fn name(&self) -> &str {
        use pb::record::Kind as K;
        match &self.kind {
            Some(K::Workshop(w)) => &w.name,
            Some(K::Practice(p)) => &p.name,
            Some(K::Tool(t)) => &t.name,
            None => "",
        }
    }

    pub fn update_time(&self) -> Option<pbjson_types::Timestamp> {
        use pb::record::Kind as K;
        match &self.kind {
            Some(K::Workshop(w)) => w.update_time,
            Some(K::Practice(p)) => p.update_time,
            Some(K::Tool(t)) => t.update_time,
            None => None,
        }
    }
}

/// Wraps a stored record body in the `Record` oneof.
pub fn record_from_body(kind: Kind, body: &[u8]) -> Result<pb::Record, prost::DecodeError> {
    use pb::record::Kind as K;
    use prost::Message;
    let inner = match kind {
        Kind::Workshop => K::Workshop(pb::Workshop::decode(body)?),
        Kind::Practice => K::Practice(pb::Practice::decode(body)?),
        Kind::Tool => K::Tool(pb::Tool::decode(body)?),
    };
    Ok(pb::Record { kind: Some(inner) })
}
