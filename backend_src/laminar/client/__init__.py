"""Clients of a running Laminar tritonserver: gRPC request building and streaming (grpc_stream),
and a local tritonserver on free ports for tests and benchmarks (triton_server).

Shared by perf/, the tests and the OpenAI layer, so there is one way to build a request. Needs
tritonclient (build.sh pins it; the `openai` extra of the package lists it)."""
