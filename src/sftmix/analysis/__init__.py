"""Analysis, all built from the results store (so any of it can be rebuilt at any time):

- ``stats``: bootstrap intervals, paired differences, McNemar, verdicts (a new statistic goes here);
- ``results``: configurations (replicates merged), their metrics and the results table;
- ``findings``: a study's claims and predictions tested against the data;
- ``laws``: the scaling and mixture laws as values (a new law is one value); ``lawfit`` fits them
  to a study; ``propose`` turns them into a mixture or DMT's k to run next;
- ``document``, ``report``, ``lawreport``, ``figure``, ``tsne``: the report, built once as
  sections and rendered to HTML and Markdown.
"""
