"""The lucidity benchmark app: `bench.py` holds the jobs, `bench_jobs.py` is generated."""
