"""Sketch makers: TOM (a learned photo -> line sketch network, `train.py`/`evaluate.py`) and XDoG (`xdog.py`);
`sketch.py` makes sketches with either, of one photo or a folder."""
