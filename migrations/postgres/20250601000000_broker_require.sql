-- The audit writer sends a batch's writes and its COMMIT together (broker::store::pg_writer), so a
-- check on what the writes did must fail the statement itself: a failed statement aborts the
-- transaction, and the COMMIT behind it then rolls back.
CREATE FUNCTION broker_require(ok boolean, message text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION '%', message;
    END IF;
    RETURN true;
END;
$$;
