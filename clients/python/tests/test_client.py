"""connect(), errors, paging and batch upserts against a live hub."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import grpc
import pytest

import copex_client as copex
from copex_client import common_pb2, record_pb2, tool_pb2
from conftest import copex_bin


def new_tool(owner: str, title: str, region: str = "KE") -> record_pb2.Record:
    return record_pb2.Record(
        tool=tool_pb2.Tool(
            name=f"{owner}/tools/{uuid.uuid4().hex[:12]}",
            display_name=title,
            summary="A tool for the client tests.",
            category=tool_pb2.TOOL_CATEGORY_REPORTING,
            regions=[region],
            sharing=common_pb2.Sharing(tlp=common_pb2.TLP_GREEN),
        )
    )


def test_connect_by_arguments(hub, clean_env):
    with copex.connect(
        hub=hub.url, ca=hub.pki / "ca.pem", cert=hub.pki / "admin.pem", key=hub.pki / "admin.key"
    ) as client:
        assert client.whoami().name == "partners/admin"


def test_connect_by_environment(hub, clean_env, monkeypatch):
    monkeypatch.setenv("COPEX_HUB", hub.url)
    monkeypatch.setenv("COPEX_CA", str(hub.pki / "ca.pem"))
    monkeypatch.setenv("COPEX_CERT", str(hub.pki / "admin.pem"))
    monkeypatch.setenv("COPEX_KEY", str(hub.pki / "admin.key"))
    with copex.connect() as client:
        assert client.whoami().name == "partners/admin"


def test_connect_by_profile_argument_variable_and_working_directory(hub, clean_env, monkeypatch):
    profile = hub.create_partner("py-profile")
    with copex.connect(profile=profile) as client:
        assert client.whoami().name == "partners/py-profile"
    monkeypatch.setenv("COPEX_PROFILE", str(profile))
    with copex.connect() as client:
        assert client.whoami().name == "partners/py-profile"
    monkeypatch.delenv("COPEX_PROFILE")
    # A bundle: copex.toml with relative paths, read from the working directory.
    bundle = clean_env / "bundle"
    bundle.mkdir()
    for name in ("ca.pem", "py-profile.pem", "py-profile.key"):
        shutil.copy(hub.pki / name, bundle / name)
    (bundle / "copex.toml").write_text(
        profile.read_text().replace(str(hub.pki), ".")
    )
    monkeypatch.chdir(bundle)
    with copex.connect() as client:
        assert client.whoami().name == "partners/py-profile"
    # Arguments win over the profile, setting by setting.
    with copex.connect(cert=hub.pki / "admin.pem", key=hub.pki / "admin.key") as client:
        assert client.whoami().name == "partners/admin"


def test_no_settings_is_a_configuration_error_naming_the_ways(clean_env):
    with pytest.raises(copex.ConfigurationError) as err:
        copex.connect()
    text = str(err.value)
    for way in ("connect(", "COPEX_HUB", "profile=", "COPEX_PROFILE", "copex.toml"):
        assert way in text, text


def test_profile_with_unknown_key_is_refused(hub, clean_env):
    bad = clean_env / "copex.toml"
    bad.write_text((hub.pki / "admin.toml").read_text() + 'sever_name = "x"\n')
    with pytest.raises(copex.ConfigurationError, match="sever_name"):
        copex.connect(profile=bad)


def other_pki(tmp_path):
    other = tmp_path / "other"
    subprocess.run([copex_bin(), "pki", "init", "--dir", str(other)], check=True, capture_output=True)
    subprocess.run(
        [copex_bin(), "pki", "issue", "--dir", str(other), "--partner", "admin"], check=True, capture_output=True
    )
    return other


def timed(fn):
    start = time.monotonic()
    try:
        fn()
    finally:
        assert time.monotonic() - start < 15, "took too long: a hang"


def test_wrong_ca_is_hub_untrusted(hub, clean_env):
    other = other_pki(clean_env)
    with pytest.raises(copex.HubUntrusted, match="not trusted by") as err:
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", ca=other / "ca.pem"))
    assert not err.value.retryable


def test_certificate_of_another_ca_is_rejected(hub, clean_env):
    other = other_pki(clean_env)
    with pytest.raises(copex.CertificateRejected, match="unknown CA") as err:
        timed(
            lambda: copex.connect(profile=hub.pki / "admin.toml", cert=other / "admin.pem", key=other / "admin.key")
        )
    assert not err.value.retryable


def test_expired_certificate_is_rejected(hub, clean_env):
    d = clean_env
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "old.key", "-out", "old.csr", "-subj", "/CN=admin",
         "-addext", "subjectAltName=URI:spiffe://copex.local/partner/admin"],
        cwd=d, check=True, capture_output=True,
    )
    (d / "ext.cnf").write_text(
        "subjectAltName=URI:spiffe://copex.local/partner/admin\nextendedKeyUsage=clientAuth\n"
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", "old.csr", "-CA", str(hub.pki / "ca.pem"), "-CAkey",
         str(hub.pki / "ca.key"), "-days", "-1", "-extfile", "ext.cnf", "-out", "old.pem"],
        cwd=d, check=True, capture_output=True,
    )
    with pytest.raises(copex.CertificateRejected, match="expired"):
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", cert=d / "old.pem", key=d / "old.key"))


def test_missing_key_names_the_file(hub, clean_env):
    with pytest.raises(copex.ConfigurationError, match="nowhere.key"):
        copex.connect(profile=hub.pki / "admin.toml", key=clean_env / "nowhere.key")


def test_hub_down_is_unreachable_at_once(hub, clean_env):
    with pytest.raises(copex.HubUnreachable) as err:
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", hub="https://localhost:1"))
    assert err.value.retryable


def test_malformed_record_raises_with_field_violations_and_changes_nothing(hub):
    with copex.connect(profile=hub.pki / "admin.toml") as client:
        before = len(list(client.list("tools", parent="partners/admin")))
        with pytest.raises(copex.InvalidArgument) as err:
            client.tools.CreateTool(
                tool_pb2.CreateToolRequest(parent="partners/admin", tool=tool_pb2.Tool(summary="no title"))
            )
        e = err.value
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.reason == "INVALID_FIELD"
        fields = {v.field for v in e.field_violations}
        assert "tool.display_name" in fields, fields
        assert not e.retryable
        assert len(list(client.list("tools", parent="partners/admin"))) == before
        with pytest.raises(copex.NotFound) as err:
            client.tools.GetTool(tool_pb2.GetToolRequest(name="partners/admin/tools/none-such"))
        assert err.value.reason == "RESOURCE_NOT_FOUND"


def test_list_and_search_page_through_everything(hub):
    profile = hub.create_partner("py-pager")
    with copex.connect(profile=profile) as client:
        made = [new_tool("partners/py-pager", f"Pager zebrafinch tool {i}") for i in range(7)]
        assert client.batch_upsert(made).ok
        names = [t.name for t in client.list("tools", parent="partners/py-pager", page_size=2)]
        assert sorted(names) == sorted(r.tool.name for r in made)
        # Search is an index following the feed: within a second.
        deadline = time.monotonic() + 10
        while True:
            hits = [h.record.tool.name for h in client.search("zebrafinch", page_size=3)]
            if len(hits) == 7 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(hits) == sorted(names)
        with pytest.raises(ValueError):
            list(client.list("nothing"))


def test_batch_upsert_chunks_and_reports_each_item(hub):
    profile = hub.create_partner("py-batch")
    with copex.connect(profile=profile) as client:
        records = [new_tool("partners/py-batch", f"Batch tool {i}") for i in range(2100)]
        bad_at = {5, 1500, 2099}
        for i in bad_at:
            records[i].tool.display_name = ""
        report = client.batch_upsert(records)
        assert len(report.results) == 2100
        assert [r.index for r in report.failed] == sorted(bad_at)
        for r in report.failed:
            assert r.outcome == "FAILED"
            assert isinstance(r.error, copex.InvalidArgument)
            assert any(v.field.endswith("display_name") for v in r.error.field_violations)
        assert report.count("CREATED") == 2100 - len(bad_at)
        assert [r.name for r in report.results] == [r.tool.name for r in records]
        # Sent again, nothing changes and the report says so.
        good = [r for i, r in enumerate(records) if i not in bad_at]
        again = client.batch_upsert(good, chunk_size=700)
        assert again.ok and again.count("UNCHANGED") == len(good)
        with pytest.raises(ValueError):
            client.batch_upsert(good, chunk_size=1001)
