"""User-facing front ends: the Gradio page (`ui.py`) and the HTTP service (`serve/`). They parse and report;
the work is the pipeline's."""
