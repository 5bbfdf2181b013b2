-- Base models carry what registration found: path, format, architecture, size.
ALTER TABLE models ADD COLUMN info TEXT;
