"""The local web page and REST API over an index (`lookalike serve`): `app.create_app` builds it, `routes` holds
one small function per route over one `routes.WebService`, `schemas` the answers' shapes, `service` the search
over a live index."""
