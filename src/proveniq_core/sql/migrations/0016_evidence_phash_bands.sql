-- A near-duplicate photo is found through an index instead of a scan of every hashed photo
-- (which cost about 0.23 µs per photo per verification: 4.6 ms at 20 000 photos, and growing).
-- The 64-bit perceptual hash is cut into nine bands, eight of 7 bits and one of 8. Two hashes
-- that differ in at most 8 bits touch at most eight bands, so they agree on at least one: the
-- photos within 8 bits of a hash are among those sharing a band with it, which the GIN index
-- finds. Each band is a token, its index * 256 + its bits, so equal bits in different bands
-- do not match.
CREATE FUNCTION phash_bands(h bigint) RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY[
               (h & 127)::integer,
         256 + ((h >> 7) & 127)::integer,
         512 + ((h >> 14) & 127)::integer,
         768 + ((h >> 21) & 127)::integer,
        1024 + ((h >> 28) & 127)::integer,
        1280 + ((h >> 35) & 127)::integer,
        1536 + ((h >> 42) & 127)::integer,
        1792 + ((h >> 49) & 127)::integer,
        2048 + ((h >> 56) & 255)::integer]
$$;

CREATE INDEX evidence_phash_bands ON evidence USING gin (phash_bands(phash))
WHERE phash IS NOT NULL;
