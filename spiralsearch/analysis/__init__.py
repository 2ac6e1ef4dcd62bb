"""The analysis layer: scaling-law fits (fitting, scaling, scaling_nd), the fit table
(fits), the HTML report (report) and attention probes (probes), docs/design.md §6-7.
"""

# Bootstrap draws when none are asked for (fit, report, analyse). 200 left a 95% interval's
# ends moving ~5% from seed to seed (the mini study's looped multiplier: lower end
# 1.45-1.56, upper 2.38-2.49); 1000 cost the mini study's fit 10 s instead of 6 s here.
BOOTSTRAP = 1000
