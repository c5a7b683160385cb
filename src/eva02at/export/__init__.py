"""Export: trained models' embeddings (the layer above ``train``).

Inference over frame shards and query texts, the Parquet layout of embeddings, compact codes for search."""
