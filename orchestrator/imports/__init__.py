"""Import sources read streaming: validation passes, chunk plans stored as byte ranges, and
re-reading one chunk from its range. Pure (files only, no network, no ledger), blocking: the
adapters run these in a thread."""
