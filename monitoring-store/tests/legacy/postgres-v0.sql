--
-- PostgreSQL database dump
--

\restrict hcRYYJTfoihZ2j4IowoyB5Jzj2fRpjR8qaPnTVdHM6Igmd9CmYPTtPgX8RMDjB8

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: monitoring_alerts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_alerts (
    alert_id text NOT NULL,
    device_id text NOT NULL,
    rule_id text NOT NULL,
    rule_type text NOT NULL,
    severity text NOT NULL,
    status text NOT NULL,
    message text NOT NULL,
    started_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    metric text,
    value double precision,
    threshold double precision,
    acknowledged_at double precision,
    acknowledged_by text,
    cleared_at double precision,
    owner_id text
);


--
-- Name: monitoring_deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_deliveries (
    id text NOT NULL,
    subscription_id text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at double precision NOT NULL,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: monitoring_device_rules; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_device_rules (
    device_id text NOT NULL,
    owner_id text,
    device_type text,
    config jsonb NOT NULL,
    version bigint NOT NULL,
    active boolean DEFAULT true NOT NULL
);


--
-- Name: monitoring_hourly; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_hourly (
    window_seconds integer NOT NULL,
    hour_start double precision NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL
);


--
-- Name: monitoring_hourly_devices; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_hourly_devices (
    window_seconds integer NOT NULL,
    hour_start double precision NOT NULL,
    device_id text NOT NULL,
    readings bigint NOT NULL
);


--
-- Name: monitoring_samples; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_samples (
    device_id text NOT NULL,
    ts double precision NOT NULL,
    seq bigint NOT NULL,
    metrics text[] NOT NULL,
    vals double precision[] NOT NULL
);


--
-- Name: monitoring_store_meta; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_store_meta (
    key text NOT NULL,
    value text NOT NULL
);


--
-- Name: monitoring_subscriptions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_subscriptions (
    id text NOT NULL,
    owner_id text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    device_ids text[],
    min_severity text NOT NULL,
    rule_types text[],
    created_at double precision NOT NULL
);


--
-- Name: monitoring_windows; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.monitoring_windows (
    device_id text NOT NULL,
    metric text NOT NULL,
    window_seconds integer NOT NULL,
    window_start double precision NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    mean double precision NOT NULL,
    stddev double precision NOT NULL,
    p50 double precision NOT NULL,
    p95 double precision NOT NULL,
    last double precision NOT NULL,
    last_ts double precision NOT NULL,
    final boolean DEFAULT true NOT NULL,
    updated_at double precision DEFAULT 0 NOT NULL
)
WITH (autovacuum_vacuum_insert_scale_factor='0.01', autovacuum_vacuum_scale_factor='0.02');


--
-- Data for Name: monitoring_alerts; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_alerts (alert_id, device_id, rule_id, rule_type, severity, status, message, started_at, updated_at, metric, value, threshold, acknowledged_at, acknowledged_by, cleared_at, owner_id) FROM stdin;
a2	d2	silent	silent	warning	active	no data for 60 s	1789948807	1789948807	\N	\N	\N	\N	\N	\N	u2
a1	d1	hot	threshold	critical	acknowledged	temp above 30	1789948805	1789948809	temp	31	30	1789948809	u1	\N	u1
\.


--
-- Data for Name: monitoring_deliveries; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_deliveries (id, subscription_id, payload, status, attempts, next_attempt_at, last_error, created_at, updated_at) FROM stdin;
dl1	s1	{"alert_id": "a1"}	pending	1	1789948860	HTTP 503	1789948810	1789948820
\.


--
-- Data for Name: monitoring_device_rules; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_device_rules (device_id, owner_id, device_type, config, version, active) FROM stdin;
d1	u1	sensor	{"rules": [{"id": "hot", "type": "threshold", "above": 30, "metric": "temp"}]}	3	t
\.


--
-- Data for Name: monitoring_hourly; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_hourly (window_seconds, hour_start, device_id, metric, count, min, max, sum) FROM stdin;
60	1789948800	d1	hum	21	1	14	175
60	1789948800	d1	temp	21	1	14	175
60	1789948800	d2	hum	21	1	14	175
60	1789948800	d2	temp	21	1	14	175
\.


--
-- Data for Name: monitoring_hourly_devices; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_hourly_devices (window_seconds, hour_start, device_id, readings) FROM stdin;
60	1789948800	d1	21
60	1789948800	d2	21
\.


--
-- Data for Name: monitoring_samples; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_samples (device_id, ts, seq, metrics, vals) FROM stdin;
d1	1789948800	0	{hum,temp}	{0.5,0}
d1	1789948801	1	{hum,temp}	{1.5,1}
d1	1789948802	2	{hum,temp}	{2.5,2}
d1	1789948803	3	{hum,temp}	{3.5,3}
d1	1789948804	4	{hum,temp}	{4.5,4}
d1	1789948805	5	{hum,temp}	{5.5,5}
d1	1789948806	6	{hum,temp}	{6.5,6}
d1	1789948807	7	{hum,temp}	{7.5,7}
d1	1789948808	8	{hum,temp}	{8.5,8}
d1	1789948809	9	{hum,temp}	{9.5,9}
d2	1789948800	0	{hum,temp}	{0.5,0}
d2	1789948801	1	{hum,temp}	{1.5,1}
d2	1789948802	2	{hum,temp}	{2.5,2}
d2	1789948803	3	{hum,temp}	{3.5,3}
d2	1789948804	4	{hum,temp}	{4.5,4}
d2	1789948805	5	{hum,temp}	{5.5,5}
d2	1789948806	6	{hum,temp}	{6.5,6}
d2	1789948807	7	{hum,temp}	{7.5,7}
d2	1789948808	8	{hum,temp}	{8.5,8}
d2	1789948809	9	{hum,temp}	{9.5,9}
\.


--
-- Data for Name: monitoring_store_meta; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_store_meta (key, value) FROM stdin;
hourly_rollup	1
\.


--
-- Data for Name: monitoring_subscriptions; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_subscriptions (id, owner_id, url, secret, device_ids, min_severity, rule_types, created_at) FROM stdin;
s1	u1	https://hooks.example.com/x	sekrit	{d1}	warning	\N	1789948800
\.


--
-- Data for Name: monitoring_windows; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.monitoring_windows (device_id, metric, window_seconds, window_start, count, min, max, mean, stddev, p50, p95, last, last_ts, final, updated_at) FROM stdin;
d1	temp	10	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d1	temp	10	1789948810	2	2	10	6	0.5	5	8	5	1789948811	t	2
d1	temp	10	1789948820	3	3	11	7	0.5	5	8	6	1789948821	t	2
d1	temp	10	1789948830	4	4	12	8	0.5	5	8	7	1789948831	t	2
d1	temp	10	1789948840	5	5	13	9	0.5	5	8	8	1789948841	t	2
d1	temp	10	1789948850	6	6	14	10	0.5	5	8	9	1789948851	t	2
d1	temp	60	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d1	temp	60	1789948860	2	2	10	6	0.5	5	8	5	1789948861	t	2
d1	temp	60	1789948920	3	3	11	7	0.5	5	8	6	1789948921	t	2
d1	temp	60	1789948980	4	4	12	8	0.5	5	8	7	1789948981	t	2
d1	temp	60	1789949040	5	5	13	9	0.5	5	8	8	1789949041	t	2
d1	temp	60	1789949100	6	6	14	10	0.5	5	8	9	1789949101	t	2
d1	hum	10	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d1	hum	10	1789948810	2	2	10	6	0.5	5	8	5	1789948811	t	2
d1	hum	10	1789948820	3	3	11	7	0.5	5	8	6	1789948821	t	2
d1	hum	10	1789948830	4	4	12	8	0.5	5	8	7	1789948831	t	2
d1	hum	10	1789948840	5	5	13	9	0.5	5	8	8	1789948841	t	2
d1	hum	10	1789948850	6	6	14	10	0.5	5	8	9	1789948851	t	2
d1	hum	60	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d1	hum	60	1789948860	2	2	10	6	0.5	5	8	5	1789948861	t	2
d1	hum	60	1789948920	3	3	11	7	0.5	5	8	6	1789948921	t	2
d1	hum	60	1789948980	4	4	12	8	0.5	5	8	7	1789948981	t	2
d1	hum	60	1789949040	5	5	13	9	0.5	5	8	8	1789949041	t	2
d1	hum	60	1789949100	6	6	14	10	0.5	5	8	9	1789949101	t	2
d2	temp	10	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d2	temp	10	1789948810	2	2	10	6	0.5	5	8	5	1789948811	t	2
d2	temp	10	1789948820	3	3	11	7	0.5	5	8	6	1789948821	t	2
d2	temp	10	1789948830	4	4	12	8	0.5	5	8	7	1789948831	t	2
d2	temp	10	1789948840	5	5	13	9	0.5	5	8	8	1789948841	t	2
d2	temp	10	1789948850	6	6	14	10	0.5	5	8	9	1789948851	t	2
d2	temp	60	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d2	temp	60	1789948860	2	2	10	6	0.5	5	8	5	1789948861	t	2
d2	temp	60	1789948920	3	3	11	7	0.5	5	8	6	1789948921	t	2
d2	temp	60	1789948980	4	4	12	8	0.5	5	8	7	1789948981	t	2
d2	temp	60	1789949040	5	5	13	9	0.5	5	8	8	1789949041	t	2
d2	temp	60	1789949100	6	6	14	10	0.5	5	8	9	1789949101	t	2
d2	hum	10	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d2	hum	10	1789948810	2	2	10	6	0.5	5	8	5	1789948811	t	2
d2	hum	10	1789948820	3	3	11	7	0.5	5	8	6	1789948821	t	2
d2	hum	10	1789948830	4	4	12	8	0.5	5	8	7	1789948831	t	2
d2	hum	10	1789948840	5	5	13	9	0.5	5	8	8	1789948841	t	2
d2	hum	10	1789948850	6	6	14	10	0.5	5	8	9	1789948851	t	2
d2	hum	60	1789948800	1	1	9	5	0.5	5	8	4	1789948801	t	2
d2	hum	60	1789948860	2	2	10	6	0.5	5	8	5	1789948861	t	2
d2	hum	60	1789948920	3	3	11	7	0.5	5	8	6	1789948921	t	2
d2	hum	60	1789948980	4	4	12	8	0.5	5	8	7	1789948981	t	2
d2	hum	60	1789949040	5	5	13	9	0.5	5	8	8	1789949041	t	2
d2	hum	60	1789949100	6	6	14	10	0.5	5	8	9	1789949101	t	2
\.


--
-- Name: monitoring_alerts monitoring_alerts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_alerts
    ADD CONSTRAINT monitoring_alerts_pkey PRIMARY KEY (alert_id);


--
-- Name: monitoring_deliveries monitoring_deliveries_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_deliveries
    ADD CONSTRAINT monitoring_deliveries_pkey PRIMARY KEY (id);


--
-- Name: monitoring_device_rules monitoring_device_rules_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_device_rules
    ADD CONSTRAINT monitoring_device_rules_pkey PRIMARY KEY (device_id);


--
-- Name: monitoring_hourly_devices monitoring_hourly_devices_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_hourly_devices
    ADD CONSTRAINT monitoring_hourly_devices_pkey PRIMARY KEY (window_seconds, hour_start, device_id);


--
-- Name: monitoring_hourly monitoring_hourly_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_hourly
    ADD CONSTRAINT monitoring_hourly_pkey PRIMARY KEY (window_seconds, hour_start, device_id, metric);


--
-- Name: monitoring_samples monitoring_samples_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_samples
    ADD CONSTRAINT monitoring_samples_pkey PRIMARY KEY (device_id, ts, seq);


--
-- Name: monitoring_store_meta monitoring_store_meta_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_store_meta
    ADD CONSTRAINT monitoring_store_meta_pkey PRIMARY KEY (key);


--
-- Name: monitoring_subscriptions monitoring_subscriptions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_subscriptions
    ADD CONSTRAINT monitoring_subscriptions_pkey PRIMARY KEY (id);


--
-- Name: monitoring_windows monitoring_windows_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_windows
    ADD CONSTRAINT monitoring_windows_pkey PRIMARY KEY (device_id, window_seconds, window_start, metric) INCLUDE (count, min, max, mean, stddev, p50, p95, last, last_ts, final, updated_at);


--
-- Name: monitoring_alerts_device; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_alerts_device ON public.monitoring_alerts USING btree (device_id, started_at DESC);


--
-- Name: monitoring_alerts_open; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_alerts_open ON public.monitoring_alerts USING btree (status, started_at DESC) WHERE (status <> 'cleared'::text);


--
-- Name: monitoring_alerts_started; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_alerts_started ON public.monitoring_alerts USING btree (started_at DESC);


--
-- Name: monitoring_deliveries_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_deliveries_due ON public.monitoring_deliveries USING btree (next_attempt_at) WHERE (status = 'pending'::text);


--
-- Name: monitoring_deliveries_sub; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_deliveries_sub ON public.monitoring_deliveries USING btree (subscription_id, created_at DESC);


--
-- Name: monitoring_samples_ts_brin; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_samples_ts_brin ON public.monitoring_samples USING brin (ts) WITH (pages_per_range='32');


--
-- Name: monitoring_subscriptions_owner; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_subscriptions_owner ON public.monitoring_subscriptions USING btree (owner_id, created_at);


--
-- Name: monitoring_windows_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX monitoring_windows_time ON public.monitoring_windows USING btree (window_seconds, window_start);


--
-- Name: monitoring_deliveries monitoring_deliveries_subscription_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.monitoring_deliveries
    ADD CONSTRAINT monitoring_deliveries_subscription_id_fkey FOREIGN KEY (subscription_id) REFERENCES public.monitoring_subscriptions(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--

\unrestrict hcRYYJTfoihZ2j4IowoyB5Jzj2fRpjR8qaPnTVdHM6Igmd9CmYPTtPgX8RMDjB8

