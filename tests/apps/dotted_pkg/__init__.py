"""A package for the dotted APP spellings (chaussette's ``package.module.attr``)."""
