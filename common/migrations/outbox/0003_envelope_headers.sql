-- a structured-mode event (content type application/cloudevents+json) is
-- published with its content-type header and extra headers only: the value
-- carries the envelope. envelope_headers asks the relay to put the envelope
-- in the binary-mode headers as well (ce_id, ce_type, ce_source, ce_time,
-- tenant-id, traceparent), equal to the value's attributes, so a consumer
-- routing the events of an internal topic reads them without parsing the
-- value (cm_outbox.h). false for every row written before.
ALTER TABLE outbox ADD COLUMN envelope_headers boolean NOT NULL DEFAULT false;
