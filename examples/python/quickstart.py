"""A partner's first calls to a copex hub from Python.

Generate the stubs from the repository's proto/ folder first:

    mkdir -p gen && python -m grpc_tools.protoc -I../../proto --python_out=gen --grpc_python_out=gen ../../proto/copex/v1/*.proto
    PYTHONPATH=gen python quickstart.py

Connection settings come from the same variables as the copex CLI
(COPEX_HUB, COPEX_CA, COPEX_CERT, COPEX_KEY); the defaults fit a hub started
with `cargo run --release -- serve` in the repository root.
"""

import sys

import grpc

import hub

from copex.v1 import (
    common_pb2,
    partner_pb2,
    partner_pb2_grpc,
    record_pb2,
    search_pb2,
    search_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)

def main():
    with hub.channel() as channel:
        me = partner_pb2_grpc.PartnerServiceStub(channel).GetCurrentPartner(
            partner_pb2.GetCurrentPartnerRequest()
        )
        print("connected as", me.name)

        # Where the change feed stands now, so the watch below starts after it.
        sync = sync_pb2_grpc.SyncServiceStub(channel)
        cursor = ""
        while True:
            page = sync.ListChanges(sync_pb2.ListChangesRequest(cursor=cursor, page_size=5000))
            cursor = page.next_cursor
            if page.caught_up:
                break

        tools = tool_pb2_grpc.ToolServiceStub(channel)
        created = tools.CreateTool(
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

        page = tools.ListTools(tool_pb2.ListToolsRequest(parent="partners/-", filter='regions:"KE"'))
        names = [t.name for t in page.tools]
        print("tools in KE:", ", ".join(names))
        if created.name not in names:
            sys.exit("the new tool is missing from the list")

        found = search_pb2_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(
                query='"report button" grooming',
                kinds=[record_pb2.RECORD_KIND_TOOL],
                page_size=100,
            )
        )
        for hit in found.hits:
            print(f"search hit {hit.score:.2f} {hit.record.tool.name}: {hit.snippet}")
        if created.name not in [hit.record.tool.name for hit in found.hits]:
            sys.exit("the new tool is missing from the search hits")

        # Follow the change feed until the new tool arrives.
        watch = sync.WatchChanges(sync_pb2.WatchChangesRequest(cursor=cursor), timeout=10)
        for message in watch:
            names = [c.name for c in message.changes if c.type == sync_pb2.CHANGE_TYPE_UPSERTED]
            for name in names:
                print("change: UPSERTED", name)
            if created.name in names:
                watch.cancel()
                break

        try:
            tools.GetTool(tool_pb2.GetToolRequest(name=me.name + "/tools/no-such-tool"))
            sys.exit("expected NOT_FOUND")
        except grpc.RpcError as err:
            print("missing tool:", err.code().name, "-", err.details())
            if err.code() != grpc.StatusCode.NOT_FOUND:
                sys.exit("expected NOT_FOUND")

        tools.DeleteTool(tool_pb2.DeleteToolRequest(name=created.name, etag=created.etag))
        print("deleted", created.name)


if __name__ == "__main__":
    main()
