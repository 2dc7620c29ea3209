// Forward only, QL < KL (KV-cache shape): queries at positions KL − QL + i, cache capacity KL + 40.
#define main main_unused
#include "driver.cpp"
#undef main
int main(int argc, char** argv)
{
    int B = 2, QL = atoi(argv[1]), KL = atoi(argv[2]), Hq = 4, Hkv = 2, D = atoi(argv[3]), window = atoi(argv[4]); float cap = atof(argv[5]);
    int kvcap = KL + 40; bool var = window > 0 || cap > 0; float scale = 1.0f / 16;
    std::mt19937 rng(7);
    auto q = randbf((size_t)B * QL * Hq * D, 3, rng), k = randbf((size_t)B * kvcap * Hkv * D, 3, rng), v = randbf((size_t)B * kvcap * Hkv * D, 1, rng);
    std::vector<int> seg(B * kvcap, 0);
    for (int j = 0; j < kvcap; j++) seg[j] = j < KL / 3 ? 0 : 1;  // batch 0: two segments; queries in the second
    std::vector<u16> out((size_t)B * QL * Hq * D, 0xffff); std::vector<float> lse((size_t)B * Hq * QL, NAN);
    auto Q = tof(q), K = tof(k), V = tof(v);
    std::vector<double> rO(out.size()), rL(lse.size());
    int g = Hq / Hkv;
    for (int b = 0; b < B; b++) for (int h = 0; h < Hq; h++) for (int i = 0; i < QL; i++)
    {
        int p = KL - QL + i, kh = h / g;
        std::vector<double> c(KL, -INFINITY); double mx = -INFINITY;
        for (int j = 0; j <= p; j++)
        {
            if (seg[b * kvcap + j] != seg[b * kvcap + p] || (window > 0 && p - j >= window)) continue;
            double s = 0; for (int d = 0; d < D; d++) s += (double)Q[((size_t)(b * QL + i) * Hq + h) * D + d] * K[((size_t)(b * kvcap + j) * Hkv + kh) * D + d];
            s *= scale; if (cap > 0) s = cap * tanh(s / cap); c[j] = s; mx = std::max(mx, s);
        }
        double sum = 0; for (int j = 0; j <= p; j++) if (c[j] > -INFINITY) sum += exp(c[j] - mx);
        rL[((size_t)b * Hq + h) * QL + i] = mx + log(sum);
        for (int d = 0; d < D; d++) { double o = 0; for (int j = 0; j <= p; j++) if (c[j] > -INFINITY) o += exp(c[j] - mx) / sum * V[((size_t)(b * kvcap + j) * Hkv + kh) * D + d]; rO[((size_t)(b * QL + i) * Hq + h) * D + d] = o; }
    }
    printf("kv-cache forward QL %d KL %d D %d window %d cap %g:\n", QL, KL, D, window, cap);
    run_forwards(D, var, out, lse, q, k, v, seg, QL, KL, kvcap, B, Hq, Hkv, scale, window, cap, rO, rL);
}
