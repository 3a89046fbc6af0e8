"""A partner's first calls to a copex hub from Python, with copex-client.

    pip install ./clients/python
    COPEX_PROFILE=copex-data/pki/admin.toml python examples/python/quickstart.py

Settings come from the same places as the copex CLI: COPEX_HUB, COPEX_CA,
COPEX_CERT, COPEX_KEY, else a profile (COPEX_PROFILE or ./copex.toml). The
guide is docs/partners.md.
"""

import sys
import threading

import copex_client as copex
from copex_client import common_pb2, record_pb2, sync_pb2, tool_pb2


def main():
    with copex.connect() as hub:
        me = hub.whoami()
        print("connected as", me.name)

        # Where the change feed stands now, so the watch below starts after it.
        store = copex.MemoryCursorStore()
        copex.Follower(hub, lambda change: None, store).run(until_caught_up=True)

        created = hub.tools.CreateTool(
            tool_pb2.CreateToolRequest(
                parent=me.name,
                tool=tool_pb2.Tool(
                    display_name="Report button for messaging apps",
                    summary="One tap sends a suspected grooming conversation to the hotline.",
                    category=tool_pb2.TOOL_CATEGORY_REPORTING,
                    regions=["KE", "TH"],
                    sharing=common_pb2.Sharing(tlp=common_pb2.TLP_GREEN),
                ),
            )
        )
        print("created", created.name, "etag", created.etag)

        names = [t.name for t in hub.list("tools", filter='regions:"KE"')]
        print("tools in KE:", ", ".join(names))
        if created.name not in names:
            sys.exit("the new tool is missing from the list")

        hits = list(hub.search('"report button" grooming', kinds=[record_pb2.RECORD_KIND_TOOL], wait_for_index=True))
        for hit in hits:
            print(f"search hit {hit.score:.2f} {hit.record.tool.name}: {hit.snippet}")
        if created.name not in [hit.record.tool.name for hit in hits]:
            sys.exit("the new tool is missing from the search hits")

        # Follow the change feed until the new tool arrives.
        arrived = threading.Event()

        def apply(change):
            if change.type == sync_pb2.CHANGE_TYPE_UPSERTED:
                print("change: UPSERTED", change.name)
                if change.name == created.name:
                    arrived.set()

        follower = copex.Follower(hub, apply, store)
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        if not arrived.wait(10):
            sys.exit("the new tool did not arrive on the change feed")
        follower.stop()
        thread.join(10)

        try:
            hub.tools.GetTool(tool_pb2.GetToolRequest(name=me.name + "/tools/no-such-tool"))
            sys.exit("expected NOT_FOUND")
        except copex.NotFound as err:
            print("missing tool:", err.code.name, err.reason, "-", err.message)

        hub.tools.DeleteTool(tool_pb2.DeleteToolRequest(name=created.name, etag=created.etag))
        print("deleted", created.name)


if __name__ == "__main__":
    main()
