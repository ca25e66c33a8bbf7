"""ResVG (ACM MM'24): VLTVG-R50 with a semantic-prior target query.  See resvg/model.py and resvg/config.py."""
