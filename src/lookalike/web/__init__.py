"""The local web page and REST API over an index (`lookalike serve`); see `app.create_app`."""
