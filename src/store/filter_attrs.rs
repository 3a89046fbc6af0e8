//! How record fields are indexed for filtering: one `record_attrs` row per
//! scalar value, repeated element and label, plus a few columns. The filter
//! resolver and the extraction below walk the same descriptor, so what a
//! filter may name is exactly what is stored.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind as FieldKind, MessageDescriptor, ReflectMessage, Value,
};

use super::sql_filter::{FieldResolver, FieldTarget, Storage, ValueType};
use crate::domain::Kind;
use crate::domain::record::schema;

/// One indexed value of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub field: String,
    pub str: Option<String>,
    pub num: Option<i64>,
}

/// Fields kept in columns of `records` (or `record_recipients`), or free
/// text that is searched rather than filtered, rather than in `record_attrs`.
fn is_column_field(kind: Kind, top_level: &str) -> bool {
    matches!(
        top_level,
        "name" | "uid" | "etag" | "create_time" | "update_time" | "sharing" | "labels"
    ) || top_level == kind.title_field()
        || kind.free_text_fields().contains(&top_level)
}

fn is_timestamp(desc: &MessageDescriptor) -> bool {
    desc.full_name() == "google.protobuf.Timestamp"
}

/// The filterable fields of a kind.
pub struct KindFields {
    fields: HashMap<String, FieldTarget>,
    free_text: &'static [&'static str],
}

static FIELDS: LazyLock<HashMap<Kind, KindFields>> = LazyLock::new(|| {
    Kind::ALL
        .into_iter()
        .map(|kind| (kind, KindFields::build(kind)))
        .collect()
});

pub fn fields(kind: Kind) -> &'static KindFields {
    &FIELDS[&kind]
}

impl KindFields {
    fn build(kind: Kind) -> Self {
        let desc = schema().message(kind);
        let mut fields = HashMap::new();
        let column = |storage, ty| FieldTarget {
            storage,
            ty,
            repeated: false,
        };
        fields.insert(
            "name".into(),
            column(Storage::Column("name"), ValueType::String),
        );
        fields.insert(
            "uid".into(),
            column(Storage::Column("uid"), ValueType::String),
        );
        fields.insert(
            "create_time".into(),
            column(Storage::Column("create_time"), ValueType::Timestamp),
        );
        fields.insert(
            "update_time".into(),
            column(Storage::Column("update_time"), ValueType::Timestamp),
        );
        fields.insert(
            kind.title_field().into(),
            column(Storage::Column("title"), ValueType::String),
        );
        if let Some(tlp) = schema().pool().get_enum_by_name("copex.v1.Tlp") {
            fields.insert(
                "sharing.tlp".into(),
                column(Storage::Column("tlp"), enum_type(&tlp)),
            );
        }
        fields.insert(
            "sharing.recipients".into(),
            FieldTarget {
                storage: Storage::Recipients,
                ty: ValueType::String,
                repeated: true,
            },
        );
        for field in desc.fields() {
            if !is_column_field(kind, field.name()) {
                describe(&field, field.name(), false, &mut fields);
            }
        }
        Self {
            fields,
            free_text: kind.free_text_fields(),
        }
    }

    /// Every name a filter may use, sorted, for error messages.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        names.push("labels.<key>");
        names.sort_unstable();
        names
    }
}

fn enum_type(desc: &prost_reflect::EnumDescriptor) -> ValueType {
    let values = desc
        .values()
        .map(|v| (v.name().to_owned(), v.number()))
        .collect();
    // TOOL_CATEGORY_UNSPECIFIED -> TOOL_CATEGORY_
    let prefix = desc
        .values()
        .next()
        .map(|v| v.name().trim_end_matches("UNSPECIFIED").to_owned())
        .unwrap_or_default();
    ValueType::Enum { values, prefix }
}

fn describe(
    field: &FieldDescriptor,
    path: &str,
    in_list: bool,
    out: &mut HashMap<String, FieldTarget>,
) {
    if field.is_map() {
        return;
    }
    let repeated = in_list || field.is_list();
    let attr = |ty| FieldTarget {
        storage: Storage::Attr(path.to_owned()),
        ty,
        repeated,
    };
    match field.kind() {
        FieldKind::Message(desc) if is_timestamp(&desc) => {
            out.insert(path.to_owned(), attr(ValueType::Timestamp));
        }
        FieldKind::Message(desc) => {
            for inner in desc.fields() {
                describe(&inner, &format!("{path}.{}", inner.name()), repeated, out);
            }
            if field.is_list()
                && let Some(leaf) = element_leaf(&desc, path)
            {
                out.insert(
                    path.to_owned(),
                    FieldTarget {
                        storage: Storage::Attr(leaf),
                        ty: ValueType::Messages,
                        repeated: true,
                    },
                );
            }
        }
        other => {
            if let Some(ty) = scalar_type(&other) {
                out.insert(path.to_owned(), attr(ty));
            }
        }
    }
}

/// How a filter compares a scalar field; bytes and floating point fields
/// (and messages) are not filterable as values.
fn scalar_type(kind: &FieldKind) -> Option<ValueType> {
    match kind {
        FieldKind::Enum(desc) => Some(enum_type(desc)),
        FieldKind::String => Some(ValueType::String),
        FieldKind::Bool => Some(ValueType::Bool),
        FieldKind::Int32
        | FieldKind::Int64
        | FieldKind::Uint32
        | FieldKind::Uint64
        | FieldKind::Sint32
        | FieldKind::Sint64
        | FieldKind::Fixed32
        | FieldKind::Fixed64
        | FieldKind::Sfixed32
        | FieldKind::Sfixed64 => Some(ValueType::Int),
        _ => None,
    }
}

/// A field that every element of a list of `desc` messages at `path` has a
/// `record_attrs` row of (extraction writes singular fields even when unset),
/// so its rows tell whether the list has any element.
fn element_leaf(desc: &MessageDescriptor, path: &str) -> Option<String> {
    desc.fields()
        .filter(|f| !f.is_list() && !f.is_map())
        .find_map(|f| {
            let inner = format!("{path}.{}", f.name());
            match f.kind() {
                FieldKind::Message(m) if is_timestamp(&m) => Some(inner),
                FieldKind::Message(m) => element_leaf(&m, &inner),
                other => scalar_type(&other).map(|_| inner),
            }
        })
}

impl FieldResolver for KindFields {
    fn not_filterable(&self, path: &str) -> Option<String> {
        self.free_text
            .contains(&path)
            .then(|| "is free text: it is searched (SearchService.Search), not filtered".to_owned())
    }

    fn resolve(&self, path: &str) -> Option<FieldTarget> {
        if let Some(key) = path.strip_prefix("labels.") {
            return (!key.is_empty()).then(|| FieldTarget {
                storage: Storage::Attr(path.to_owned()),
                ty: ValueType::String,
                repeated: false,
            });
        }
        self.fields.get(path).cloned()
    }
}

/// The fields of filters that span kinds (Search): those every record has,
/// and each field kept in `record_attrs` that the kinds having it store
/// alike (`regions` of practices and tools, a tool's `category`), so a
/// facet's value can narrow a search. A record of a kind without the field
/// has no value for it, as a record without a label.
pub struct SearchFields;

const COMMON_FIELDS: [&str; 6] = [
    "name",
    "uid",
    "create_time",
    "update_time",
    "sharing.tlp",
    "sharing.recipients",
];

/// Each `record_attrs` field of some kind: its target, or None when two
/// kinds store it differently (a field of one name with other types).
static ATTR_FIELDS: LazyLock<HashMap<String, Option<FieldTarget>>> =
    LazyLock::new(|| merge_attr_fields(Kind::ALL.into_iter().map(|kind| &fields(kind).fields)));

fn merge_attr_fields<'a>(
    kinds: impl Iterator<Item = &'a HashMap<String, FieldTarget>>,
) -> HashMap<String, Option<FieldTarget>> {
    let mut merged: HashMap<String, Option<FieldTarget>> = HashMap::new();
    for kind_fields in kinds {
        for (path, target) in kind_fields {
            if !matches!(target.storage, Storage::Attr(_)) {
                continue;
            }
            merged
                .entry(path.clone())
                .and_modify(|seen| {
                    if seen.as_ref() != Some(target) {
                        *seen = None;
                    }
                })
                .or_insert_with(|| Some(target.clone()));
        }
    }
    merged
}

impl FieldResolver for SearchFields {
    fn resolve(&self, path: &str) -> Option<FieldTarget> {
        if COMMON_FIELDS.contains(&path) || path.starts_with("labels.") {
            // Stored alike for every kind; any kind's resolver answers.
            return fields(Kind::Tool).resolve(path);
        }
        ATTR_FIELDS.get(path).cloned().flatten()
    }

    fn field_names(&self) -> Vec<String> {
        let mut kinds_fields: Vec<&String> = ATTR_FIELDS
            .iter()
            .filter_map(|(path, target)| target.as_ref().map(|_| path))
            .collect();
        kinds_fields.sort_unstable();
        COMMON_FIELDS
            .iter()
            .map(|f| f.to_string())
            .chain(["labels.<key>".to_owned()])
            .chain(kinds_fields.into_iter().cloned())
            .collect()
    }

    fn not_filterable(&self, path: &str) -> Option<String> {
        if matches!(ATTR_FIELDS.get(path), Some(None)) {
            return Some(
                "has another type in each kind that has it: filter it in that kind's List".into(),
            );
        }
        Kind::ALL
            .into_iter()
            .any(|kind| kind.title_field() == path || kind.free_text_fields().contains(&path))
            .then(|| "is text: search it with the query, not the filter".to_owned())
    }
}

/// The `record_attrs` rows of a record.
pub fn attrs(kind: Kind, msg: &DynamicMessage) -> Vec<Attr> {
    let mut out = Vec::new();
    for field in msg.descriptor().fields() {
        let name = field.name();
        if name == "labels" {
            if let Some(map) = msg.get_field(&field).as_map() {
                for (key, value) in map {
                    if let (Some(key), Some(value)) = (key.as_str(), value.as_str()) {
                        out.push(Attr {
                            field: format!("labels.{key}"),
                            str: Some(value.to_owned()),
                            num: None,
                        });
                    }
                }
            }
        } else if !is_column_field(kind, name) {
            extract(&field, name, &msg.get_field(&field), &mut out);
        }
    }
    out
}

fn extract(field: &FieldDescriptor, path: &str, value: &Value, out: &mut Vec<Attr>) {
    match value {
        Value::List(items) => {
            for item in items {
                extract_one(field, path, item, out);
            }
        }
        Value::Map(_) => {}
        one => extract_one(field, path, one, out),
    }
}

fn extract_one(field: &FieldDescriptor, path: &str, value: &Value, out: &mut Vec<Attr>) {
    let text = |s: String| Attr {
        field: path.to_owned(),
        str: Some(s),
        num: None,
    };
    let number = |n: i64| Attr {
        field: path.to_owned(),
        str: None,
        num: Some(n),
    };
    match (field.kind(), value) {
        (FieldKind::Message(desc), Value::Message(msg)) if is_timestamp(&desc) => {
            let seconds = msg
                .get_field_by_name("seconds")
                .and_then(|v| v.as_i64())
                .unwrap_or_default();
            let nanos = msg
                .get_field_by_name("nanos")
                .and_then(|v| v.as_i32())
                .unwrap_or_default();
            out.push(number(
                seconds.saturating_mul(1_000_000) + i64::from(nanos) / 1000,
            ));
        }
        (FieldKind::Message(desc), Value::Message(msg)) => {
            for inner in desc.fields() {
                extract(
                    &inner,
                    &format!("{path}.{}", inner.name()),
                    &msg.get_field(&inner),
                    out,
                );
            }
        }
        (FieldKind::Enum(desc), Value::EnumNumber(n)) => {
            let name = desc
                .get_value(*n)
                .map(|v| v.name().to_owned())
                .unwrap_or_else(|| n.to_string());
            out.push(text(name));
        }
        (_, Value::String(s)) => out.push(text(s.clone())),
        (_, Value::Bool(b)) => out.push(number(i64::from(*b))),
        (_, Value::I32(n)) => out.push(number(i64::from(*n))),
        (_, Value::I64(n)) => out.push(number(*n)),
        (_, Value::U32(n)) => out.push(number(i64::from(*n))),
        (_, Value::U64(n)) => out.push(number(i64::try_from(*n).unwrap_or(i64::MAX))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::to_dynamic;
    use crate::pb;

    #[test]
    fn resolver_and_extraction_agree() {
        let workshop = pb::Workshop {
            title: "Innovative application of ICTs".into(),
            year: 2012,
            status: pb::WorkshopStatus::Proposed as i32,
            themes: vec!["Security".into(), "Privacy".into()],
            organisers: vec![pb::Person {
                display_name: "Anjan Bose".into(),
                affiliation: "ECPAT International".into(),
                ..Default::default()
            }],
            labels: [("region".to_string(), "global".to_string())].into(),
            ..Default::default()
        };
        let rows = attrs(Kind::Workshop, &to_dynamic(&workshop).unwrap());
        let resolver = fields(Kind::Workshop);
        for row in &rows {
            assert!(
                resolver.resolve(&row.field).is_some(),
                "{} is stored but not filterable",
                row.field
            );
        }
        let find = |f: &str| {
            rows.iter()
                .filter(|r| r.field == f)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(find("year")[0].num, Some(2012));
        assert_eq!(
            find("status")[0].str.as_deref(),
            Some("WORKSHOP_STATUS_PROPOSED")
        );
        assert_eq!(find("themes").len(), 2);
        assert_eq!(
            find("organisers.affiliation")[0].str.as_deref(),
            Some("ECPAT International")
        );
        assert_eq!(find("labels.region")[0].str.as_deref(), Some("global"));
        // Scalars are indexed at their default value too, so `forum = ""` works.
        assert_eq!(find("forum")[0].str.as_deref(), Some(""));
        // Columns are not duplicated into attrs.
        assert!(find("title").is_empty());
        assert!(resolver.resolve("title").is_some());
        assert!(resolver.resolve("sharing.tlp").is_some());
        assert!(resolver.resolve("no_such_field").is_none());
    }

    #[test]
    fn a_search_filter_names_the_fields_of_any_kind() {
        let regions = SearchFields.resolve("regions").expect("regions");
        assert_eq!(regions.storage, Storage::Attr("regions".into()));
        assert!(regions.repeated);
        assert!(matches!(
            SearchFields.resolve("category").map(|t| t.ty),
            Some(ValueType::Enum { .. })
        ));
        assert_eq!(
            SearchFields.resolve("year").map(|t| t.ty),
            Some(ValueType::Int)
        );
        assert!(SearchFields.resolve("sharing.tlp").is_some());
        assert!(SearchFields.resolve("labels.region").is_some());
        // Titles are columns every kind fills under its own field name:
        // `title` would match tools' display names. They are searched.
        for title in ["title", "display_name", "description"] {
            assert!(SearchFields.resolve(title).is_none(), "{title}");
            assert!(SearchFields.not_filterable(title).is_some(), "{title}");
        }
        assert!(SearchFields.field_names().contains(&"regions".to_owned()));
    }

    #[test]
    fn a_field_two_kinds_store_differently_is_not_merged() {
        let attr = |ty, repeated| FieldTarget {
            storage: Storage::Attr("code".into()),
            ty,
            repeated,
        };
        let one: HashMap<String, FieldTarget> = [
            ("code".to_owned(), attr(ValueType::String, false)),
            ("tags".to_owned(), attr(ValueType::String, true)),
        ]
        .into();
        let other: HashMap<String, FieldTarget> = [
            ("code".to_owned(), attr(ValueType::Int, false)),
            ("tags".to_owned(), attr(ValueType::String, true)),
            (
                "title".to_owned(),
                FieldTarget {
                    storage: Storage::Column("title"),
                    ty: ValueType::String,
                    repeated: false,
                },
            ),
        ]
        .into();
        let merged = merge_attr_fields([&one, &other].into_iter());
        assert_eq!(merged["code"], None);
        assert_eq!(merged["tags"], Some(attr(ValueType::String, true)));
        // Columns are the common fields' business, not merged.
        assert!(!merged.contains_key("title"));
    }
}
