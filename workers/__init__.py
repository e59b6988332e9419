"""Code that runs on lab nodes as Ray tasks and actors; it never touches the store or the API."""
