"""Usage metering and billing: what each sandbox used, durably, and what it costs.

calc.py     pure: counter deltas, integration of samples, hour buckets, month periods
prices.py   pure: the price table (loaded from a file) and cost of an amount of usage
invoices.py pure: monthly invoices from hourly usage and prices
store.py    SQLite: hourly usage buckets, running sessions, final invoices
meter.py    the Trio shell: samples running sandboxes, takes gateway traffic, records sessions
"""
