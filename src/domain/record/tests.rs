use super::*;

fn timestamp_value(micros: i64) -> Value {
    let ts = timestamp_from_micros(micros);
    let desc = schema()
        .pool
        .get_message_by_name("google.protobuf.Timestamp")
        .expect("Timestamp is in the built-in descriptors");
    let mut msg = DynamicMessage::new(desc);
    msg.set_field_by_name("seconds", Value::I64(ts.seconds));
    msg.set_field_by_name("nanos", Value::I32(ts.nanos));
    Value::Message(msg)
}

fn set_output_fields(msg: &mut DynamicMessage, out: &OutputFields) {
    msg.set_field_by_name("name", Value::String(out.name.clone()));
    msg.set_field_by_name("uid", Value::String(out.uid.clone()));
    msg.set_field_by_name("etag", Value::String(out.etag.clone()));
    msg.set_field_by_name("create_time", timestamp_value(out.create_time));
    msg.set_field_by_name("update_time", timestamp_value(out.update_time));
}

fn content_etag<M: KindMessage>(msg: &DynamicMessage) -> Result<String> {
    encode_content::<M>(msg).map(|(_, etag)| etag)
}
use prost::Message;

fn tool(tlp: Tlp, recipients: &[&str]) -> pb::Tool {
    pb::Tool {
        display_name: "PhotoDNA".into(),
        sharing: Some(pb::Sharing {
            tlp: tlp as i32,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }),
        ..Default::default()
    }
}

fn fields(violations: &[FieldViolation]) -> Vec<&str> {
    violations.iter().map(|v| v.field.as_str()).collect()
}

#[test]
fn valid_tool_passes() {
    let msg = to_dynamic(&tool(Tlp::Amber, &["partners/b"])).unwrap();
    assert!(validate(Kind::Tool, &msg).is_empty());
}

#[test]
fn violations_name_their_fields() {
    let mut t = tool(Tlp::Unspecified, &[]);
    t.display_name = "x".repeat(301);
    t.labels.insert("Bad Key".into(), "v".into());
    t.regions = vec!["KE".into(); 101];
    t.related = vec!["nonsense".into()];
    t.category = 99;
    let v = validate(Kind::Tool, &to_dynamic(&t).unwrap());
    assert_eq!(
        fields(&v),
        vec![
            "tool.sharing.tlp",
            "tool.display_name",
            "tool.category",
            "tool.regions",
            "tool.labels",
            "tool.related[0]"
        ]
    );
}

#[test]
fn recipients_rules() {
    let v = validate(
        Kind::Tool,
        &to_dynamic(&tool(Tlp::Green, &["partners/b"])).unwrap(),
    );
    assert_eq!(fields(&v), vec!["tool.sharing.recipients"]);
    let v = validate(
        Kind::Tool,
        &to_dynamic(&tool(Tlp::Red, &["b", "partners/c", "partners/c"])).unwrap(),
    );
    assert_eq!(
        fields(&v),
        vec!["tool.sharing.recipients[0]", "tool.sharing.recipients[2]"]
    );
    let missing = pb::Tool {
        display_name: "x".into(),
        ..Default::default()
    };
    let v = validate(Kind::Tool, &to_dynamic(&missing).unwrap());
    assert_eq!(fields(&v), vec!["tool.sharing.tlp"]);
}

#[test]
fn etag_ignores_output_fields_and_follows_content() {
    let mut a = to_dynamic(&tool(Tlp::Green, &[])).unwrap();
    let before = content_etag::<pb::Tool>(&a).unwrap();
    set_output_fields(
        &mut a,
        &OutputFields {
            name: "partners/a/tools/t".into(),
            uid: "u".into(),
            etag: "e".into(),
            create_time: 1,
            update_time: 2,
        },
    );
    assert_eq!(content_etag::<pb::Tool>(&a).unwrap(), before);
    a.set_field_by_name("summary", Value::String("changed".into()));
    assert_ne!(content_etag::<pb::Tool>(&a).unwrap(), before);
}

#[test]
fn output_fields_appended_to_content_decode_as_set() {
    for kind in Kind::ALL {
        let desc = schema().message(kind);
        for (name, number) in [
            ("name", NAME_FIELD),
            ("uid", UID_FIELD),
            ("etag", ETAG_FIELD),
            ("create_time", CREATE_TIME_FIELD),
            ("update_time", UPDATE_TIME_FIELD),
        ] {
            assert_eq!(
                desc.get_field_by_name(name).map(|f| f.number()),
                Some(number)
            );
        }
    }
    let msg = to_dynamic(&tool(Tlp::Green, &[])).unwrap();
    let (content, etag) = encode_content::<pb::Tool>(&msg).unwrap();
    let out = OutputFields {
        name: "partners/a/tools/t".into(),
        uid: "u-1".into(),
        etag: etag.clone(),
        create_time: 1_700_000_000_123_456,
        update_time: 1_700_000_001_000_000,
    };
    let decoded = pb::Tool::decode(with_output_fields(&content, &out).as_slice()).unwrap();
    let mut expected = msg.clone();
    set_output_fields(&mut expected, &out);
    assert_eq!(decoded, from_dynamic::<pb::Tool>(&expected).unwrap());
}

#[test]
fn update_mask_paths() {
    let mut stored = tool(Tlp::Green, &[]);
    stored.summary = "old summary".into();
    stored.labels.insert("keep".into(), "1".into());
    stored.labels.insert("drop".into(), "2".into());
    stored.name = "partners/a/tools/t".into();
    let mut target = to_dynamic(&stored).unwrap();

    let mut patch = tool(Tlp::Red, &[]);
    patch.display_name = "New name".into();
    patch.summary = "new summary".into();
    patch.labels.insert("add".into(), "3".into());
    let patch = to_dynamic(&patch).unwrap();

    let mask: Vec<String> = [
        "display_name",
        "sharing.tlp",
        "labels.add",
        "labels.drop",
        "uid",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    apply_update_mask(&mut target, &patch, &mask).unwrap();
    let result: pb::Tool = from_dynamic(&target).unwrap();
    assert_eq!(result.display_name, "New name");
    assert_eq!(result.summary, "old summary");
    assert_eq!(result.sharing.unwrap().tlp, Tlp::Red as i32);
    assert_eq!(
        result.labels.keys().cloned().collect::<Vec<_>>(),
        vec!["add", "keep"]
    );
    assert_eq!(result.name, "partners/a/tools/t");

    let err = apply_update_mask(&mut target, &patch, &["no_such_field".to_string()]);
    assert!(matches!(err, Err(Error::Invalid(v)) if v[0].field == "update_mask"));
}

#[test]
fn empty_mask_replaces_but_keeps_output_fields() {
    let mut stored = tool(Tlp::Green, &[]);
    stored.name = "partners/a/tools/t".into();
    stored.uid = "uid-1".into();
    stored.summary = "old".into();
    let mut target = to_dynamic(&stored).unwrap();
    let mut patch = tool(Tlp::Green, &[]);
    patch.uid = "forged".into();
    apply_update_mask(&mut target, &to_dynamic(&patch).unwrap(), &[]).unwrap();
    let result: pb::Tool = from_dynamic(&target).unwrap();
    assert_eq!(result.uid, "uid-1");
    assert_eq!(result.summary, "");
}
