-- A device's own Config.txt layout: the file as imported (key order, key spelling, blank and
-- comment lines), kept up to date as its desired values change, so that the device's
-- Config.txt comes back as written. NULL: the device follows its profile's layout.
ALTER TABLE device_config ADD COLUMN document TEXT;
