"""Test inputs the tests make themselves: speech, face clips and odd media files."""
