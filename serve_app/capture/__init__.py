"""Capture: what a replica answered, written to Parquet off the request path.

`recorder.Recorder` takes each answered request from the data plane (one call, after a
result exists) into a bounded buffer; a background thread writes it through
nonstop/capture.py's layout at the configured interval, on every swap and at shutdown.
When storage is slow, full or unreachable, records are dropped and counted, never a
request failed or delayed. Off unless the deployment's user_config turns it on.
"""
