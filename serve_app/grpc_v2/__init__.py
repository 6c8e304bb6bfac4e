"""The gRPC transport: the Open Inference Protocol (V2) `GRPCInferenceService` over the data plane.

The servicer turns protobuf messages into what the data plane and the V2 tensor codec
take, and their answers back into messages; it never imports the HTTP transport. The
.proto and the code protoc generated from it (`make proto`) live here, imported by
Serve's gRPC server through serve_config.yaml's `grpc_servicer_functions`.
"""
