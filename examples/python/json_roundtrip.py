"""proto3 JSON between Python and copex: a Record written by Python's
json_format.MessageToJson goes in with `copex push`, and every line of
`copex export` parses with json_format.Parse.

    PYTHONPATH=gen COPEX_BIN=path/to/copex python json_roundtrip.py
"""

import os
import subprocess
import sys
import tempfile
import uuid

from google.protobuf import json_format

from copex.v1 import common_pb2, partner_pb2, record_pb2, tool_pb2

COPEX = os.environ.get("COPEX_BIN", "copex")


def copex(*args):
    return subprocess.run([COPEX, *args], check=False, capture_output=True, text=True)


def main():
    me = copex("--output", "json", "whoami")
    if me.returncode != 0:
        sys.exit(f"copex whoami failed: {me.stderr}")
    owner = json_format.Parse(me.stdout.strip(), partner_pb2.Partner()).name
    name = f"{owner}/tools/py-{uuid.uuid4().hex[:12]}"
    record = record_pb2.Record(
        tool=tool_pb2.Tool(
            name=name,
            display_name="Written by Python",
            category=tool_pb2.TOOL_CATEGORY_CLASSIFIER,
            regions=["KE"],
            labels={"origin": "python"},
            sharing=common_pb2.Sharing(tlp=common_pb2.TLP_GREEN),
        )
    )
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        # MessageToJson indents; a JSONL line holds one object on one line.
        f.write(json_format.MessageToJson(record, indent=None) + "\n")
        path = f.name
    pushed = copex("push", path)
    print(pushed.stdout.strip())
    if pushed.returncode != 0:
        sys.exit(f"copex push failed: {pushed.stdout}{pushed.stderr}")

    exported = copex("export")
    if exported.returncode != 0:
        sys.exit(f"copex export failed: {exported.stderr}")
    found = None
    for line in exported.stdout.splitlines():
        parsed = json_format.Parse(line, record_pb2.Record())
        if parsed.WhichOneof("kind") == "tool" and parsed.tool.name == name:
            found = parsed.tool
    if found is None:
        sys.exit(f"{name} is not in the export")
    if found.display_name != "Written by Python" or list(found.regions) != ["KE"]:
        sys.exit(f"the round trip changed the record: {found}")
    if not found.etag or not found.HasField("create_time"):
        sys.exit("the export lacks the output-only fields")
    print(f"round trip ok: {name} (etag {found.etag})")


if __name__ == "__main__":
    main()
