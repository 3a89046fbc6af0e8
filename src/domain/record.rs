//! Generic record handling, driven by the message descriptors so the three
//! kinds share one path: validation, update masks, output-only fields, etags.

use std::collections::{BTreeSet, HashSet};
use std::sync::LazyLock;

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind as FieldKind, MessageDescriptor, ReflectMessage, Value,
};

use super::error::{Error, FieldViolation, Result};
use super::kind::{Kind, KindMessage};
use super::names::{self, truncate};
use super::sharing;
use crate::pb::{self, Tlp};

pub const MAX_TITLE_CHARS: usize = 300;
/// PostgreSQL text cannot hold U+0000, so no stored text may contain it,
/// whichever backend runs.
pub const NUL_DESCRIPTION: &str = "cannot contain the NUL character (U+0000)";
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
pub const MAX_ITEMS: usize = 100;
/// The most records one BatchUpsertRecords call takes.
pub const MAX_BATCH: usize = 1000;
pub const MAX_LABEL_KEY_CHARS: usize = 63;
pub const MAX_LABEL_VALUE_CHARS: usize = 256;

/// Fields the server sets; a client's values are ignored.
pub const OUTPUT_ONLY: [&str; 5] = ["name", "uid", "etag", "create_time", "update_time"];

/// The descriptor pool compiled into the binary.
pub struct Schema {
    pool: DescriptorPool,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    // The descriptor set is produced by build.rs from our own protos; failing
    // to decode it is a build defect, not a runtime condition.
    pool: DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the built-in descriptor set decodes"),
});

pub fn schema() -> &'static Schema {
    &SCHEMA
}

impl Schema {
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    pub fn message(&self, kind: Kind) -> MessageDescriptor {
        self.pool
            .get_message_by_name(kind.message_name())
            .expect("every kind has a message in the built-in descriptors")
    }
}

pub fn to_dynamic<M: KindMessage>(msg: &M) -> Result<DynamicMessage> {
    let mut dynamic = DynamicMessage::new(schema().message(M::KIND));
    dynamic.transcode_from(msg).map_err(Error::internal)?;
    Ok(dynamic)
}

pub fn from_dynamic<M: KindMessage>(msg: &DynamicMessage) -> Result<M> {
    msg.transcode_to::<M>().map_err(Error::internal)
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1000) as i64
}

pub fn timestamp_from_micros(micros: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Server-set fields of a stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFields {
    pub name: String,
    pub uid: String,
    pub etag: String,
    pub create_time: i64,
    pub update_time: i64,
}

pub fn clear_output_fields(msg: &mut DynamicMessage) {
    for field in OUTPUT_ONLY {
        msg.clear_field_by_name(field);
    }
}

/// Field numbers of the output-only fields: the same in every record kind
/// (a test checks the descriptors).
pub const NAME_FIELD: u32 = 1;
pub const UID_FIELD: u32 = 2;
pub const ETAG_FIELD: u32 = 3;
pub const CREATE_TIME_FIELD: u32 = 4;
pub const UPDATE_TIME_FIELD: u32 = 5;

/// A record's content encoded without its output-only fields, and its etag:
/// a digest of that encoding, so equal content has an equal etag (that is
/// also how an unchanged upsert is found).
pub fn encode_content<M: KindMessage>(msg: &DynamicMessage) -> Result<(Vec<u8>, String)> {
    let mut content = msg.clone();
    clear_output_fields(&mut content);
    // Through the generated type, whose maps are ordered: a stable encoding.
    let bytes = from_dynamic::<M>(&content)?.encode_to_vec();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let etag = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, etag))
}

/// Appends the output-only fields to encoded content. Protobuf decoders take
/// fields in any order, so the content is not encoded again.
pub fn with_output_fields(content: &[u8], out: &OutputFields) -> Vec<u8> {
    use prost::encoding::{message, string};
    let mut body = Vec::with_capacity(content.len() + out.name.len() + 96);
    body.extend_from_slice(content);
    string::encode(NAME_FIELD, &out.name, &mut body);
    string::encode(UID_FIELD, &out.uid, &mut body);
    string::encode(ETAG_FIELD, &out.etag, &mut body);
    message::encode(
        CREATE_TIME_FIELD,
        &timestamp_from_micros(out.create_time),
        &mut body,
    );
    message::encode(
        UPDATE_TIME_FIELD,
        &timestamp_from_micros(out.update_time),
        &mut body,
    );
    body
}

pub fn string_field(msg: &DynamicMessage, name: &str) -> String {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn title_of(kind: Kind, msg: &DynamicMessage) -> String {
    string_field(msg, kind.title_field())
}

/// `(tlp, recipient partner ids)`; call after `validate`.
pub fn sharing_of(msg: &DynamicMessage) -> (i32, Vec<String>) {
    let Some(Value::Message(sharing)) = msg.get_field_by_name("sharing").map(|v| v.into_owned())
    else {
        return (Tlp::Unspecified as i32, Vec::new());
    };
    let tlp = sharing
        .get_field_by_name("tlp")
        .and_then(|v| v.as_enum_number())
        .unwrap_or_default();
    let recipients = sharing
        .get_field_by_name("recipients")
        .and_then(|v| {
            v.as_list().map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .filter_map(|n| n.strip_prefix("partners/").map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    (tlp, recipients)
}

/// Checks everything that can be checked without the store. Field paths are
/// AIP-193 paths under `{kind}` (e.g. `tool.sharing.tlp`).
pub fn validate(kind: Kind, msg: &DynamicMessage) -> Vec<FieldViolation> {
    let root = kind.singular();
    let mut violations = Vec::new();
    check_sharing(root, msg, &mut violations);

    let title_field = kind.title_field();
    let title = title_of(kind, msg);
    let title_path = format!("{root}.{title_field}");
    if title.trim().is_empty() {
        violations.push(FieldViolation::new(&title_path, "is required"));
    } else {
        let chars = title.chars().count();
        if chars > MAX_TITLE_CHARS {
            violations.push(FieldViolation::new(
                &title_path,
                format!("is {chars} characters long; the limit is {MAX_TITLE_CHARS}"),
            ));
        }
    }

    check_limits(root, msg, &mut violations);
    check_labels(root, msg, &mut violations);

    if let Some(related) = msg.get_field_by_name("related") {
        for (i, item) in related.as_list().unwrap_or_default().iter().enumerate() {
            let text = item.as_str().unwrap_or_default();
            if names::RecordName::parse_any("related", text).is_err() {
                violations.push(FieldViolation::new(
                    format!("{root}.related[{i}]"),
                    format!(
                        "{:?} is not a record name (partners/{{partner}}/{{workshops|practices|tools}}/{{id}})",
                        truncate(text, 80)
                    ),
                ));
            }
        }
    }
    // One violation per field: a 100,000-character title is too long once,
    // not once in characters and again in bytes.
    let mut seen = std::collections::HashSet::new();
    violations.retain(|v| seen.insert(v.field.clone()));
    violations
}

fn check_sharing(root: &str, msg: &DynamicMessage, out: &mut Vec<FieldViolation>) {
    let tlp_path = format!("{root}.sharing.tlp");
    if !msg.has_field_by_name("sharing") {
        out.push(FieldViolation::new(
            tlp_path,
            "is required: set sharing.tlp to TLP_CLEAR, TLP_GREEN, TLP_AMBER, TLP_AMBER_STRICT or TLP_RED",
        ));
        return;
    }
    let Some(Value::Message(sharing)) = msg.get_field_by_name("sharing").map(|v| v.into_owned())
    else {
        return;
    };
    let tlp = sharing
        .get_field_by_name("tlp")
        .and_then(|v| v.as_enum_number())
        .unwrap_or_default();
    match Tlp::try_from(tlp) {
        Ok(Tlp::Unspecified) => out.push(FieldViolation::new(
            &tlp_path,
            "is required: set it to TLP_CLEAR, TLP_GREEN, TLP_AMBER, TLP_AMBER_STRICT or TLP_RED",
        )),
        Err(_) => out.push(FieldViolation::new(
            &tlp_path,
            format!("{tlp} is not a TLP value"),
        )),
        Ok(_) => {}
    }
    let recipients: Vec<String> = sharing
        .get_field_by_name("recipients")
        .and_then(|v| {
            v.as_list().map(|l| {
                l.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    let recipients_path = format!("{root}.sharing.recipients");
    if !recipients.is_empty() && !sharing::is_restricted(tlp) {
        out.push(FieldViolation::new(
            &recipients_path,
            "must be empty for TLP_CLEAR and TLP_GREEN: those records are seen by every partner",
        ));
        return;
    }
    if recipients.len() > MAX_ITEMS {
        out.push(FieldViolation::new(
            &recipients_path,
            format!("has {} items; the limit is {MAX_ITEMS}", recipients.len()),
        ));
        return;
    }
    let mut seen = HashSet::new();
    for (i, recipient) in recipients.iter().enumerate() {
        let path = format!("{recipients_path}[{i}]");
        if names::parse_partner_name(&path, recipient).is_err() {
            out.push(FieldViolation::new(
                path,
                format!(
                    "{:?} is not a partner name of the form partners/{{partner}}",
                    truncate(recipient, 80)
                ),
            ));
        } else if !seen.insert(recipient.as_str()) {
            out.push(FieldViolation::new(
                path,
                format!("{recipient} is named twice"),
            ));
        }
    }
}

/// Text, repeated-field and map caps, and known enum values, everywhere.
fn check_limits(path: &str, msg: &DynamicMessage, out: &mut Vec<FieldViolation>) {
    for (field, value) in msg.fields() {
        let field_path = format!("{path}.{}", field.name());
        match value {
            Value::List(items) => {
                if items.len() > MAX_ITEMS {
                    out.push(FieldViolation::new(
                        &field_path,
                        format!("has {} items; the limit is {MAX_ITEMS}", items.len()),
                    ));
                    continue;
                }
                for (i, item) in items.iter().enumerate() {
                    check_value(&format!("{field_path}[{i}]"), &field.kind(), item, out);
                }
            }
            Value::Map(entries) => {
                if entries.len() > MAX_ITEMS {
                    out.push(FieldViolation::new(
                        &field_path,
                        format!("has {} entries; the limit is {MAX_ITEMS}", entries.len()),
                    ));
                }
            }
            other => check_value(&field_path, &field.kind(), other, out),
        }
    }
}

fn check_value(path: &str, kind: &FieldKind, value: &Value, out: &mut Vec<FieldViolation>) {
    match (kind, value) {
        (_, Value::String(text)) if text.len() > MAX_TEXT_BYTES => {
            out.push(FieldViolation::new(
                path,
                format!(
                    "is {} bytes long; the limit is {MAX_TEXT_BYTES}",
                    text.len()
                ),
            ));
        }
        (_, Value::String(text)) if text.contains('\0') => {
            out.push(FieldViolation::new(path, NUL_DESCRIPTION));
        }
        (FieldKind::Enum(desc), Value::EnumNumber(n)) if desc.get_value(*n).is_none() => {
            out.push(FieldViolation::new(
                path,
                format!("{n} is not a value of {}", desc.name()),
            ));
        }
        (FieldKind::Message(desc), Value::Message(inner))
            if desc.full_name() != "google.protobuf.Timestamp" =>
        {
            check_limits(path, inner, out);
        }
        _ => {}
    }
}

fn check_labels(root: &str, msg: &DynamicMessage, out: &mut Vec<FieldViolation>) {
    let Some(labels) = msg.get_field_by_name("labels") else {
        return;
    };
    let Some(entries) = labels.as_map() else {
        return;
    };
    // Sorted, so the violations come in a stable order.
    let keys: BTreeSet<String> = entries
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for key in keys {
        let path = format!("{root}.labels.{key}");
        let key_ok = key.chars().count() <= MAX_LABEL_KEY_CHARS
            && key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !key_ok {
            out.push(FieldViolation::new(
                format!("{root}.labels"),
                format!(
                    "key {:?} is not valid: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter",
                    truncate(&key, 80)
                ),
            ));
            continue;
        }
        let value = entries
            .get(&prost_reflect::MapKey::String(key.clone()))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            out.push(FieldViolation::new(
                path,
                format!("is longer than {MAX_LABEL_VALUE_CHARS} characters"),
            ));
        } else if value.contains('\0') {
            out.push(FieldViolation::new(path, NUL_DESCRIPTION));
        }
    }
}

/// INVALID_ARGUMENT with every violation of `msg`, when it has any.
pub fn check(kind: Kind, msg: &DynamicMessage) -> Result<()> {
    let violations = validate(kind, msg);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(violations))
    }
}

/// Applies an update mask (AIP-134): copies the named fields of `patch` into
/// `target`. An empty mask or `*` replaces every mutable field. Output-only
/// paths are ignored; unknown paths are INVALID_ARGUMENT.
pub fn apply_update_mask(
    target: &mut DynamicMessage,
    patch: &DynamicMessage,
    paths: &[String],
) -> Result<()> {
    if paths.is_empty() || paths.iter().any(|p| p == "*") {
        let mut replaced = patch.clone();
        for field in OUTPUT_ONLY {
            match target.get_field_by_name(field) {
                Some(value) if target.has_field_by_name(field) => {
                    let value = value.into_owned();
                    replaced.set_field_by_name(field, value);
                }
                _ => replaced.clear_field_by_name(field),
            }
        }
        *target = replaced;
        return Ok(());
    }
    let mut violations = Vec::new();
    for path in paths {
        let segments: Vec<&str> = path.split('.').collect();
        if segments.len() == 1 && OUTPUT_ONLY.contains(&segments[0]) {
            continue;
        }
        if let Err(reason) = copy_path(target, patch, &segments) {
            violations.push(FieldViolation::new(
                "update_mask",
                format!("{:?}: {reason}", truncate(path, 120)),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(violations))
    }
}

fn copy_path(
    target: &mut DynamicMessage,
    patch: &DynamicMessage,
    segments: &[&str],
) -> std::result::Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        return Err("empty path".to_owned());
    };
    let field = target
        .descriptor()
        .get_field_by_name(first)
        .ok_or_else(|| format!("no field {first:?}"))?;
    if rest.is_empty() {
        if patch.has_field(&field) {
            target.set_field(&field, patch.get_field(&field).into_owned());
        } else {
            target.clear_field(&field);
        }
        return Ok(());
    }
    if field.is_map() {
        // `labels.key`: set or remove one entry.
        let [key] = rest else {
            return Err("a map entry path has one key".to_owned());
        };
        let key = prost_reflect::MapKey::String((*key).to_owned());
        let new_value = patch
            .get_field(&field)
            .as_map()
            .and_then(|m| m.get(&key).cloned());
        if let Value::Map(entries) = target.get_field_mut(&field) {
            match new_value {
                Some(value) => {
                    entries.insert(key, value);
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
        return Ok(());
    }
    match field.kind() {
        FieldKind::Message(_) if !field.is_list() => {
            let patch_inner = match patch.get_field(&field).into_owned() {
                Value::Message(m) => m,
                _ => return Err(format!("{first:?} is not a message")),
            };
            let Value::Message(target_inner) = target.get_field_mut(&field) else {
                return Err(format!("{first:?} is not a message"));
            };
            copy_path(target_inner, &patch_inner, rest)
        }
        _ => Err(format!("{first:?} has no sub-fields")),
    }
}

/// The partner ids a record's sharing names, for the existence check.
pub fn recipient_ids(msg: &DynamicMessage) -> Vec<String> {
    sharing_of(msg).1
}

#[cfg(test)]
mod tests;
