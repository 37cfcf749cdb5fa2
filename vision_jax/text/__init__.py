"""Text handling for captioning: word-level vocabulary and tokenisation."""
