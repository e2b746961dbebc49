"""The sinks stage: the merged VMI record from `guestinfo.vmi.v1` into a store, a REST API and VMI status.

Entry points: `sinks.serve.run_serve` (store sink + REST API) and `sinks.vmi_status.run_status_sink`.
"""
