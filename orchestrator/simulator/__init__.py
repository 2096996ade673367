"""Faithful fakes of the provider APIs (aiohttp.web), with fault injection, on one loopback port."""
