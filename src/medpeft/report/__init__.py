"""From a grid's result.json files to one frame, and from that frame to every output:
summary.md/csv, report.html/md/tex and the plots."""
