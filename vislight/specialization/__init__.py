"""Summary-driven specialisation: a classifier for a group of confused classes that scores an image
by how strongly the classes' summary prototypes appear in its feature map (see ``stage.py``)."""
