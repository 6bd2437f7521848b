-- Webhook secrets sealed at rest (webhooks/crypto.py): the column holds ``fernet:<token>``,
-- sealed under a key kept outside the database, so a copy of the database cannot sign.
--
-- SQL cannot seal the rows written before (the key is not in the database): every process
-- seals them at start-up, right after migrating (``crypto.seal_plaintext_rows``), and reads
-- them meanwhile. NOT VALID keeps those rows legal until then, while every row inserted or
-- updated from now on must be sealed.
ALTER TABLE webhook_endpoints DROP CONSTRAINT webhook_endpoints_secret_check;
ALTER TABLE webhook_endpoints ADD CONSTRAINT webhook_endpoints_secret_sealed
    CHECK (starts_with(secret, 'fernet:')) NOT VALID;
COMMENT ON COLUMN webhook_endpoints.secret IS
    'fernet:<token>: the whsec_ signing secret sealed under PROVENIQ_SECRET_KEY or <home>/secret-key';
