"""Task sequences (CW10/CW20, quick sequences), difficulty progression and stages."""
