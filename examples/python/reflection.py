"""Discover the hub's API by server reflection, without the .proto files,
and call a method with messages built from the discovered descriptors.

    python reflection.py

Connection settings: COPEX_HUB, COPEX_CA, COPEX_CERT, COPEX_KEY, as for the CLI.
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import hub

def main():
    with hub.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        print("services:", ", ".join(services))
        expected = {
            "copex.v1.AuditService",
            "copex.v1.PartnerService",
            "copex.v1.PracticeService",
            "copex.v1.SearchService",
            "copex.v1.SyncService",
            "copex.v1.ToolService",
            "copex.v1.WorkshopService",
            "grpc.health.v1.Health",
        }
        missing = expected - set(services)
        if missing:
            sys.exit(f"reflection does not list {sorted(missing)}")

        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("copex.v1.PartnerService").FindMethodByName(
            "GetCurrentPartner"
        )
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/copex.v1.PartnerService/GetCurrentPartner",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        partner = call(request_class())
        print("called GetCurrentPartner through reflection:", partner.name)
        if not partner.name.startswith("partners/"):
            sys.exit("unexpected answer")


if __name__ == "__main__":
    main()
