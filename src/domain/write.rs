//! What a write does to a record, decided from the version it finds: create,
//! update (whole or through a field mask, with `etag` and `allow_missing`)
//! and delete. Plain functions: the API prepares what it can before the
//! write, and the store calls the decision inside its write transaction
//! with the record's current version.

use prost_reflect::DynamicMessage;
use uuid::Uuid;

use super::names::RecordName;
use super::record::{self, OutputFields};
use super::{Error, Kind, KindMessage, Result};
use crate::pb;
use crate::store::{Attr, NewVersion, StoredRecord, Write, filter_attrs};

/// New content for a record, encoded and indexed; only what depends on the
/// stored version (uid, create time) is left to `version`. Built outside
/// the write transaction where it can be.
pub struct NewContent {
    kind: Kind,
    name: RecordName,
    content: Vec<u8>,
    etag: String,
    title: String,
    tlp: i32,
    recipients: Vec<String>,
    attrs: Vec<Attr>,
}

impl NewContent {
    pub fn prepare<M: KindMessage>(name: &RecordName, content: &DynamicMessage) -> Result<Self> {
        let (encoded, etag) = record::encode_content::<M>(content)?;
        let (tlp, recipients) = record::sharing_of(content);
        Ok(Self {
            kind: M::KIND,
            name: name.clone(),
            content: encoded,
            etag,
            title: record::title_of(M::KIND, content),
            tlp,
            recipients,
            attrs: filter_attrs::attrs(M::KIND, content),
        })
    }

    /// The version to store: a new record's (fresh uid, created now) or
    /// the next version of `current`.
    fn version(self, current: Option<&StoredRecord>) -> NewVersion {
        let now = record::now_micros();
        let (uid, create_time) = match current {
            Some(current) => (current.uid.clone(), current.create_time),
            None => (Uuid::new_v4().to_string(), now),
        };
        let full_name = self.name.to_string();
        let body = record::with_output_fields(
            &self.content,
            &OutputFields {
                name: full_name.clone(),
                uid: uid.clone(),
                etag: self.etag.clone(),
                create_time,
                update_time: now,
            },
        );
        NewVersion {
            attrs: self.attrs,
            record_id: self.name.id.clone(),
            record: StoredRecord {
                kind: self.kind,
                name: full_name,
                owner: self.name.owner,
                uid,
                etag: self.etag,
                create_time,
                update_time: now,
                tlp: self.tlp,
                title: self.title,
                recipients: self.recipients,
                body,
            },
        }
    }

    /// Replaces `current`, or writes nothing when the content is the same.
    fn replace(self, current: Option<&StoredRecord>) -> Write {
        match current {
            Some(current) if current.etag == self.etag => Write::Nothing,
            _ => Write::Put(Box::new(self.version(current))),
        }
    }
}

/// Create: the name must be free.
pub fn create(content: NewContent, current: Option<StoredRecord>) -> Result<Write> {
    match current {
        Some(current) => Err(Error::AlreadyExists(current.name)),
        None => Ok(content.replace(None)),
    }
}

/// What an update asks of the version it finds.
pub struct Expected {
    pub name: RecordName,
    /// The version the client read; empty for any.
    pub etag: String,
    /// Create the record when there is none.
    pub allow_missing: bool,
}

impl Expected {
    /// The version to update, or `None` to create one.
    ///
    /// An etag names the version the client read. With `allow_missing`, a
    /// record that is gone does not match it either: ABORTED
    /// (ETAG_MISMATCH), as for any other version (AIP-154), rather than
    /// NOT_FOUND, which `allow_missing` promises not to answer; the client
    /// re-reads (NOT_FOUND) and decides whether to create it again. So a
    /// record deleted since it was read is never silently re-created.
    fn check(&self, current: Option<StoredRecord>) -> Result<Option<StoredRecord>> {
        match current {
            None if !self.allow_missing => Err(Error::NotFound(self.name.to_string())),
            None if !self.etag.is_empty() => Err(self.mismatch()),
            Some(current) if !self.etag.is_empty() && self.etag != current.etag => {
                Err(self.mismatch())
            }
            current => Ok(current),
        }
    }

    fn mismatch(&self) -> Error {
        Error::EtagMismatch {
            name: self.name.to_string(),
        }
    }
}

/// An update of every mutable field: the new content does not depend on
/// the stored version.
pub fn replace(
    expected: &Expected,
    content: NewContent,
    current: Option<StoredRecord>,
) -> Result<Write> {
    let current = expected.check(current)?;
    Ok(content.replace(current.as_ref()))
}

/// An update through a field mask: `patch`'s fields named in `paths`
/// applied to the stored version (or to an empty record when
/// `allow_missing` creates one).
pub fn patch<M: KindMessage>(
    expected: &Expected,
    patch: &DynamicMessage,
    paths: &[String],
    current: Option<StoredRecord>,
) -> Result<Write> {
    let Some(current) = expected.check(current)? else {
        record::check(M::KIND, patch)?;
        return Ok(NewContent::prepare::<M>(&expected.name, patch)?.replace(None));
    };
    let mut content =
        DynamicMessage::decode(record::schema().message(M::KIND), current.body.as_slice())
            .map_err(Error::internal)?;
    record::apply_update_mask(&mut content, patch, paths)?;
    record::check(M::KIND, &content)?;
    Ok(NewContent::prepare::<M>(&expected.name, &content)?.replace(Some(&current)))
}

/// Whether an update mask leaves only the stored version out of the new
/// content: empty or `*` replaces every mutable field.
pub fn replaces_all(paths: &[String]) -> bool {
    paths.is_empty() || paths.iter().any(|p| p == "*")
}

/// Whether an update with this mask may change the record's audience.
pub fn touches_sharing(paths: &[String]) -> bool {
    replaces_all(paths)
        || paths
            .iter()
            .any(|p| p == "sharing" || p.starts_with("sharing."))
}

/// Delete: the record must exist and, with an etag, be that version.
pub fn delete(name: &str, etag: &str, current: Option<StoredRecord>) -> Result<Write> {
    match current {
        None => Err(Error::NotFound(name.to_owned())),
        Some(current) if !etag.is_empty() && etag != current.etag => Err(Error::EtagMismatch {
            name: name.to_owned(),
        }),
        Some(_) => Ok(Write::Delete),
    }
}

/// A batch item's outcome from what its write found and did.
pub fn upsert_outcome(existed: bool, changed: bool) -> pb::UpsertOutcome {
    match (existed, changed) {
        (false, _) => pb::UpsertOutcome::Created,
        (true, true) => pb::UpsertOutcome::Updated,
        (true, false) => pb::UpsertOutcome::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(etag: &str) -> StoredRecord {
        StoredRecord {
            kind: Kind::Tool,
            name: "partners/a/tools/t".into(),
            owner: "a".into(),
            uid: "uid-1".into(),
            etag: etag.into(),
            create_time: 1,
            update_time: 2,
            tlp: pb::Tlp::Green as i32,
            title: "t".into(),
            recipients: Vec::new(),
            body: Vec::new(),
        }
    }

    fn content(title: &str) -> NewContent {
        let tool = pb::Tool {
            display_name: title.into(),
            sharing: Some(pb::Sharing {
                tlp: pb::Tlp::Green as i32,
                recipients: Vec::new(),
            }),
            ..Default::default()
        };
        let name = RecordName::new("a", Kind::Tool, "t");
        NewContent::prepare::<pb::Tool>(&name, &record::to_dynamic(&tool).unwrap()).unwrap()
    }

    fn expected(etag: &str, allow_missing: bool) -> Expected {
        Expected {
            name: RecordName::new("a", Kind::Tool, "t"),
            etag: etag.into(),
            allow_missing,
        }
    }

    fn put(write: Result<Write>) -> NewVersion {
        match write {
            Ok(Write::Put(version)) => *version,
            Ok(Write::Delete) => panic!("expected a put, got a delete"),
            Ok(Write::Nothing) => panic!("expected a put, got nothing"),
            Err(err) => panic!("expected a put, got {err}"),
        }
    }

    #[test]
    fn create_takes_a_free_name_only() {
        let version = put(create(content("x"), None));
        assert_eq!(version.record.name, "partners/a/tools/t");
        assert_eq!(version.record.create_time, version.record.update_time);
        assert!(matches!(
            create(content("x"), Some(stored("e"))),
            Err(Error::AlreadyExists(name)) if name == "partners/a/tools/t"
        ));
    }

    #[test]
    fn an_update_keeps_uid_and_create_time_and_skips_equal_content() {
        let new = content("x");
        let same_etag = new.etag.clone();
        let version = put(replace(&expected("", false), new, Some(stored("old"))));
        assert_eq!(
            (version.record.uid.as_str(), version.record.create_time),
            ("uid-1", 1)
        );
        assert!(matches!(
            replace(&expected("", false), content("x"), Some(stored(&same_etag))),
            Ok(Write::Nothing)
        ));
    }

    #[test]
    fn etags_and_allow_missing() {
        let cases: [(&str, bool, Option<&str>, &str); 6] = [
            ("", false, None, "not found"),
            ("e1", true, None, "etag"),
            ("e1", false, Some("e2"), "etag"),
            ("e1", true, Some("e2"), "etag"),
            ("", true, None, "put"),
            ("e1", false, Some("e1"), "put"),
        ];
        for (etag, allow_missing, current, want) in cases {
            let got = replace(
                &expected(etag, allow_missing),
                content("x"),
                current.map(stored),
            );
            let what = match got {
                Err(Error::NotFound(_)) => "not found",
                Err(Error::EtagMismatch { .. }) => "etag",
                Ok(Write::Put(_)) => "put",
                _ => "other",
            };
            assert_eq!(
                what, want,
                "etag {etag:?}, allow_missing {allow_missing}, current {current:?}"
            );
        }
    }

    #[test]
    fn delete_needs_the_record_and_its_etag() {
        assert!(matches!(delete("n", "", None), Err(Error::NotFound(_))));
        assert!(matches!(
            delete("n", "e1", Some(stored("e2"))),
            Err(Error::EtagMismatch { .. })
        ));
        assert!(matches!(
            delete("n", "e1", Some(stored("e1"))),
            Ok(Write::Delete)
        ));
        assert!(matches!(
            delete("n", "", Some(stored("e1"))),
            Ok(Write::Delete)
        ));
    }

    #[test]
    fn masks_that_replace_or_touch_sharing() {
        let paths = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(replaces_all(&paths(&[])));
        assert!(replaces_all(&paths(&["summary", "*"])));
        assert!(!replaces_all(&paths(&["summary"])));
        assert!(touches_sharing(&paths(&["sharing.tlp"])));
        assert!(!touches_sharing(&paths(&["sharing_notes", "summary"])));
    }

    #[test]
    fn outcomes() {
        assert_eq!(upsert_outcome(false, true), pb::UpsertOutcome::Created);
        assert_eq!(upsert_outcome(true, true), pb::UpsertOutcome::Updated);
        assert_eq!(upsert_outcome(true, false), pb::UpsertOutcome::Unchanged);
    }
}
