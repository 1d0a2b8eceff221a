"""The user-study kit: intruder detection on a finished run's summaries (the paper's second
validation, as ACE's human experiments), methods blind.

``python -m vislight.study serve RUN_DIR [study.KEY=VALUE ...]`` builds the trials once
(:mod:`vislight.study.trials`: ``RUN_DIR/study/trials.json`` and the crops under
``RUN_DIR/study/crops/``) and serves a small local web app (:mod:`vislight.study.server`) where
each participant, after giving an id, picks the intruder among ``k`` members of a summary plus one
member of another summary of the same class, and names the part in a word; answers are appended to
``RUN_DIR/study/answers.jsonl`` (:mod:`vislight.study.answers`). Summaries of baselines the run kept
(``study.baselines``, e.g. Grad-CAM) are mixed in blind. ``python -m vislight.study score RUN_DIR``
(:mod:`vislight.study.score`) gives the accuracy per summary and per method with Clopper-Pearson
intervals and the participants' names beside the automatic tags (``RUN_DIR/study/score.json``).
Settings: ``conf/study/default.yaml`` (:class:`~vislight.study.settings.StudySettings`).
"""
