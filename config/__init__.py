"""The example and demo configs (example.toml, demo.toml, demo-inbox/), shipped in the wheel as
the package `orchestrator.examples` so `orchestrator demo` runs without a checkout."""
