"""The codecs: untrusted request bytes into a validated feature matrix, and answers into bytes.

One family, named by protocol and format: `v1_json` (KServe V1 `{"instances": ...}`),
`v1_arrow` (an Arrow IPC stream of columns) and `v2_tensors` (Open Inference Protocol
tensors, JSON or binary). Every codec checks sizes against the limits before it parses,
and decodes against the features of the exact version that will answer.
"""
