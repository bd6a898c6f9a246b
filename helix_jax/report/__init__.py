"""The reporting layer: reports, paper claims, charts, number formatting. The core never imports it."""
