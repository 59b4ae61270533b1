"""The API's routes, one module per resource; thin: validate (schemas), route (``Router``), call the library."""
