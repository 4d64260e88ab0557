/* Latency distribution fields shared by fastivc-ringbench and fastivc-tcpbench:
 * named percentiles and a quantile curve of the sorted round-trip samples, as
 * JSON members (each preceded by a comma) for the helpers' one-line output.
 * `fastivc bench --plot` draws the latency CDF from "quantiles_us". */
#ifndef FASTIVC_TOOLS_LATENCY_H
#define FASTIVC_TOOLS_LATENCY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* the q-quantile of n sorted samples, in microseconds (the p50/p99 fields the
 * helpers printed before use the same rule: index floor(q * n)) */
static double lat_quantile_us(const uint64_t *sorted, size_t n, double q)
{
	size_t i = (size_t)(q * (double)n);
	return (double)sorted[i < n ? i : n - 1] / 1e3;
}

/* 0, 0.01 .. 0.99, then the tail: 0.995, 0.999, 0.9995, 0.9999, 1 (the maximum) */
#define LAT_NLEVELS 105
static double lat_level(int k)
{
	static const double tail[] = {0.995, 0.999, 0.9995, 0.9999, 1.0};
	return k < 100 ? k / 100.0 : tail[k - 100];
}

/* ,"p10_us":..,"p25_us":..,"p75_us":..,"p90_us":..,"p999_us":..,"p9999_us":..,
 * "max_us":..,"quantile_levels":[..],"quantiles_us":[..] */
static void lat_print_fields(FILE *f, const uint64_t *sorted, size_t n)
{
	if (n == 0)
		return;
	fprintf(f, ",\"p10_us\":%.3f,\"p25_us\":%.3f,\"p75_us\":%.3f,\"p90_us\":%.3f,"
		"\"p999_us\":%.3f,\"p9999_us\":%.3f,\"max_us\":%.3f",
		lat_quantile_us(sorted, n, 0.10), lat_quantile_us(sorted, n, 0.25),
		lat_quantile_us(sorted, n, 0.75), lat_quantile_us(sorted, n, 0.90),
		lat_quantile_us(sorted, n, 0.999), lat_quantile_us(sorted, n, 0.9999),
		(double)sorted[n - 1] / 1e3);
	fputs(",\"quantile_levels\":[", f);
	for (int k = 0; k < LAT_NLEVELS; k++)
		fprintf(f, "%s%g", k ? "," : "", lat_level(k));
	fputs("],\"quantiles_us\":[", f);
	for (int k = 0; k < LAT_NLEVELS; k++)
		fprintf(f, "%s%.3f", k ? "," : "", lat_quantile_us(sorted, n, lat_level(k)));
	fputc(']', f);
}

#endif
