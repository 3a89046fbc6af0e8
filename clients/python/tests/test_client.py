"""connect(), errors, paging and batch upserts against a live hub."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, List, Optional

import grpc
import pytest

import copex_client as copex
from copex_client import common_pb2, record_pb2, tool_pb2
from conftest import Hub, copex_bin


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


def test_connect_by_arguments(hub: Hub, clean_env: Path) -> None:
    with copex.connect(
        hub=hub.url, ca=hub.pki / "ca.pem", cert=hub.pki / "admin.pem", key=hub.pki / "admin.key"
    ) as client:
        assert client.whoami().name == "partners/admin"


def test_connect_by_environment(hub: Hub, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPEX_HUB", hub.url)
    monkeypatch.setenv("COPEX_CA", str(hub.pki / "ca.pem"))
    monkeypatch.setenv("COPEX_CERT", str(hub.pki / "admin.pem"))
    monkeypatch.setenv("COPEX_KEY", str(hub.pki / "admin.key"))
    with copex.connect() as client:
        assert client.whoami().name == "partners/admin"


def test_connect_by_profile_argument_variable_and_working_directory(hub: Hub, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_no_settings_is_a_configuration_error_naming_the_ways(clean_env: Path) -> None:
    with pytest.raises(copex.ConfigurationError) as err:
        copex.connect()
    text = str(err.value)
    for way in ("connect(", "COPEX_HUB", "profile=", "COPEX_PROFILE", "copex.toml"):
        assert way in text, text


def test_profile_with_unknown_key_is_refused(hub: Hub, clean_env: Path) -> None:
    bad = clean_env / "copex.toml"
    bad.write_text((hub.pki / "admin.toml").read_text() + 'sever_name = "x"\n')
    with pytest.raises(copex.ConfigurationError, match="sever_name"):
        copex.connect(profile=bad)


def other_pki(tmp_path: Path) -> Path:
    other = tmp_path / "other"
    subprocess.run([copex_bin(), "pki", "init", "--dir", str(other)], check=True, capture_output=True)
    subprocess.run(
        [copex_bin(), "pki", "issue", "--dir", str(other), "--partner", "admin"], check=True, capture_output=True
    )
    return other


def timed(fn: Callable[[], object]) -> None:
    start = time.monotonic()
    try:
        fn()
    finally:
        assert time.monotonic() - start < 15, "took too long: a hang"


def test_wrong_ca_is_hub_untrusted(hub: Hub, clean_env: Path) -> None:
    other = other_pki(clean_env)
    with pytest.raises(copex.HubUntrusted, match="not trusted by") as err:
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", ca=other / "ca.pem"))
    assert not err.value.retryable


def test_certificate_of_another_ca_is_rejected(hub: Hub, clean_env: Path) -> None:
    other = other_pki(clean_env)
    with pytest.raises(copex.CertificateRejected, match="unknown CA") as err:
        timed(
            lambda: copex.connect(profile=hub.pki / "admin.toml", cert=other / "admin.pem", key=other / "admin.key")
        )
    assert not err.value.retryable


def test_expired_certificate_is_rejected(hub: Hub, clean_env: Path) -> None:
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


def test_key_of_another_certificate_is_a_key_mismatch_naming_both_files(hub: Hub, clean_env: Path) -> None:
    other = other_pki(clean_env)
    # Found before any connection: not a CertificateRejected, the hub never saw it.
    with pytest.raises(copex.KeyMismatch) as err:
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", key=other / "admin.key"))
    e = err.value
    assert isinstance(e, copex.ConfigurationError)
    assert not isinstance(e, copex.CopexError)
    assert str(other / "admin.key") in str(e) and str(hub.pki / "admin.pem") in str(e), str(e)
    assert "does not belong to the certificate" in str(e)


def test_missing_key_names_the_file(hub: Hub, clean_env: Path) -> None:
    with pytest.raises(copex.ConfigurationError, match="nowhere.key"):
        copex.connect(profile=hub.pki / "admin.toml", key=clean_env / "nowhere.key")


def test_hub_down_is_unreachable_at_once(hub: Hub, clean_env: Path) -> None:
    with pytest.raises(copex.HubUnreachable) as err:
        timed(lambda: copex.connect(profile=hub.pki / "admin.toml", hub="https://localhost:1"))
    assert err.value.retryable


def test_malformed_record_raises_with_field_violations_and_changes_nothing(hub: Hub) -> None:
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
        with pytest.raises(copex.NotFound) as missing:
            client.tools.GetTool(tool_pb2.GetToolRequest(name="partners/admin/tools/none-such"))
        assert missing.value.reason == "RESOURCE_NOT_FOUND"


def test_list_and_search_page_through_everything(hub: Hub) -> None:
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


def test_batch_upsert_chunks_and_reports_each_item(hub: Hub) -> None:
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


def test_suspended_partner_is_told_to_ask_the_operator_for_activation(hub: Hub, clean_env: Path) -> None:
    profile = hub.create_partner("py-suspended")
    admin = ["--profile", str(hub.pki / "admin.toml"), "partners"]
    subprocess.run([copex_bin(), *admin, "suspend", "py-suspended"], check=True, capture_output=True)
    try:
        with pytest.raises(copex.PermissionDenied) as err:
            timed(lambda: copex.connect(profile=profile))
        e = err.value
        assert e.reason == "PARTNER_SUSPENDED"
        assert not e.retryable
        assert "ask the hub's operator" in str(e).lower(), str(e)
        assert "copex partners activate" in e.advice and e.advice in str(e)
    finally:
        subprocess.run([copex_bin(), *admin, "activate", "py-suspended"], check=True, capture_output=True)
    with copex.connect(profile=profile) as client:
        assert client.whoami().name == "partners/py-suspended"


def test_certificate_of_no_partner_is_told_to_ask_the_operator_to_register_it(hub: Hub, clean_env: Path) -> None:
    profile = hub.issue("py-nobody")
    # connect() raises what the TypeScript client throws for this answer: the
    # hub refused the certificate, with the answer's code, reason and advice.
    with pytest.raises(copex.CertificateRejected) as err:
        timed(lambda: copex.connect(profile=profile))
    e = err.value
    assert e.code == grpc.StatusCode.UNAUTHENTICATED
    assert e.reason == "UNKNOWN_PARTNER"
    assert not e.retryable
    assert "maps to no partner" in str(e), str(e)
    assert isinstance(e.__cause__, copex.Unauthenticated)
    # The hub's message names the identity; the advice says what to ask for.
    assert "spiffe://copex.local/partner/py-nobody" in str(e), str(e)
    assert "ask the hub's operator to register your partner" in str(e).lower(), str(e)
    assert "copex partners create" in str(e)


def test_errors_a_partner_can_fix_carry_no_operator_advice(hub: Hub) -> None:
    with copex.connect(profile=hub.pki / "admin.toml") as client:
        with pytest.raises(copex.NotFound) as err:
            client.tools.GetTool(tool_pb2.GetToolRequest(name="partners/admin/tools/none-such"))
    assert err.value.advice == ""
    assert "operator" not in str(err.value)


def test_revoked_certificate_is_refused_on_open_and_new_connections_never_retried(hub: Hub, clean_env: Path) -> None:
    profile = hub.create_partner("py-revoked")
    client = copex.connect(profile=profile)
    watching = copex.connect(profile=profile)
    ended: List[Exception] = []

    def follow() -> None:
        try:
            copex.Follower(watching, lambda change: None).run()
        except Exception as err:  # what the follower stopped with
            ended.append(err)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        assert client.whoami().name == "partners/py-revoked"
        subprocess.run(
            [copex_bin(), "pki", "revoke", "--dir", str(hub.pki), "--cert", str(hub.pki / "py-revoked.pem")],
            check=True, capture_output=True,
        )
        # The hub reads its CRL again within a second or two; an open
        # connection is refused from the next call on.
        deadline = time.monotonic() + 10
        refused: Optional[copex.CopexError] = None
        while refused is None:
            try:
                timed(client.whoami)
            except copex.CopexError as exc:
                refused = exc
            else:
                assert time.monotonic() < deadline, "the revoked certificate is still accepted"
                time.sleep(0.2)
        assert isinstance(refused, copex.Unauthenticated), repr(refused)
        assert refused.reason == "CERTIFICATE_REVOKED"
        assert not refused.retryable
        assert "copex pki request" in str(refused) and "revoked" in str(refused)
        # A follower stops with the same error rather than retrying.
        with pytest.raises(copex.Unauthenticated) as stopped:
            timed(lambda: copex.Follower(client, lambda change: None).run(until_caught_up=True))
        assert stopped.value.reason == "CERTIFICATE_REVOKED"
        # One that was watching: the hub ends its open stream (it checks
        # every 2 s while idle) and the follower stops, not retrying.
        follower.join(15)
        assert not follower.is_alive(), "the watching follower hangs on a revoked certificate"
        assert len(ended) == 1 and isinstance(ended[0], copex.Unauthenticated), ended
        assert ended[0].reason == "CERTIFICATE_REVOKED"
    finally:
        client.close()
        watching.close()
    # A new connection fails in the TLS handshake, as the specific error.
    with pytest.raises(copex.CertificateRejected, match="revoked") as rejected:
        timed(lambda: copex.connect(profile=profile))
    assert not rejected.value.retryable
    assert "copex pki request" in str(rejected.value)


def test_retryable_codes_except_the_reasons_the_same_request_meets_again() -> None:
    def error(code: grpc.StatusCode, reason: str = "") -> copex.CopexError:
        return copex.CopexError(code, "m", reason)

    codes = grpc.StatusCode
    for code in (codes.UNAVAILABLE, codes.RESOURCE_EXHAUSTED, codes.DEADLINE_EXCEEDED):
        assert error(code).retryable, code
    assert error(codes.DEADLINE_EXCEEDED, "SEARCH_INDEX_BEHIND").retryable
    assert not error(codes.DEADLINE_EXCEEDED, "QUERY_TOO_LONG").retryable
    assert not error(codes.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE").retryable
    for code in (codes.INVALID_ARGUMENT, codes.NOT_FOUND, codes.ABORTED, codes.PERMISSION_DENIED, codes.INTERNAL):
        assert not error(code).retryable, code
