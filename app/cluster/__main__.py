"""``python -m app.cluster``: deploy the service on a Ray Serve cluster (:mod:`app.cluster.launch`)."""

from app.cluster.launch import main

main()
