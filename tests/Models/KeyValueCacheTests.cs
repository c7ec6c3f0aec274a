using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

[TestFixture]
public class KeyValueCacheTests
{
    [Test]
    public void IncrementalDecodingMatchesTheFullForwardPass()
    {
        torch.manual_seed(5);
        using var model = new GptForCausalLM(ModelTestData.Tiny("gpt-tiny"));
        model.eval();
        using var noGrad = torch.no_grad();
        Tensor ids = torch.randint(0, 60, new long[] { 2, 12 }, dtype: ScalarType.Int64);
        Tensor full = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids }));

        // A prompt of 5 positions in one call, then 3 and 4 more: the multi-position continuation exercises the offset causal mask.
        using KeyValueCache cache = model.NewCache();
        Tensor a = model.ForwardCached(ids.narrow(1, 0, 5), cache);
        Tensor b = model.ForwardCached(ids.narrow(1, 5, 3), cache);
        var singles = Enumerable.Range(8, 4).Select(t => model.ForwardCached(ids.narrow(1, t, 1), cache)).ToArray();
        Tensor incremental = torch.cat(new[] { a, b }.Concat(singles).ToArray(), 1);
        Assert.That(cache.Length, Is.EqualTo(12));
        double diff = (incremental - full).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(1e-5), $"max |cached − full| = {diff:E2} (fp32)");
    }

    [Test]
    public void TheCacheCannotGrowPastTheContext()
    {
        using var model = new GptForCausalLM(ModelTestData.Tiny("gpt-tiny") with { MaxSequenceLength = 8 });
        model.eval();
        using var noGrad = torch.no_grad();
        using KeyValueCache cache = model.NewCache();
        model.ForwardCached(torch.zeros(1, 6, dtype: ScalarType.Int64), cache);
        var ex = Assert.Throws<ArgumentException>(() => model.ForwardCached(torch.zeros(1, 3, dtype: ScalarType.Int64), cache));
        Assert.That(ex!.Message, Does.Contain("6 cached + 3 new").And.Contain("8"));
    }

    [Test]
    public void AnEncoderHasNoCache()
    {
        using var model = new BertForMaskedLM(ModelTestData.Tiny());
        using var cache = new KeyValueCache(2);
        Assert.Throws<InvalidOperationException>(() => model.Backbone.ForwardCached(torch.zeros(1, 3, dtype: ScalarType.Int64), cache));
    }
}
