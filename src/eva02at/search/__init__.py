"""Search: galleries of exported clips, their indexes, and the retrieval browser (above ``evaluation``)."""
