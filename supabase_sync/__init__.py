"""supabase_sync: forward queued Supabase tasks to RunPod serverless endpoints, write results back.

    python -m supabase_sync            # run the dispatcher (see docs/dispatcher.md)
    python -m supabase_sync migrate    # apply the schema's pending migrations to DATABASE_URL
    python -m supabase_sync sql        # print the migrations, for psql
"""
