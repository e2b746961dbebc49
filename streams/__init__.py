"""Stream stage: joins the raw domain and agent topics per VMI into the merged record."""
